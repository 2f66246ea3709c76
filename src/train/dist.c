/* dist.c: running a job on MPI ranks under OpenMPI: the transport, the rank-side entry (dist_rank_entry) with
 * hooks relayed to the parent, and the parent-side launcher (dist_launch). It knows nothing of what the ranks
 * run: a job.json names a mode and the caller's table says which function runs it (the GRPO job is rl_dist.c,
 * the transport self-check dist_check.c). See dist.h for the protocol and docs/distributed.md for running
 * ranks on several machines. */
#include "train/dist.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mpi.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/strbuf.h"
#include "util/util.h"

extern char **environ;

/* ---------------------------------------------------------------- transport */

static size_t g_chunk = (size_t)1 << 30; /* largest single MPI message; dist_set_chunk lowers it for tests */

void dist_set_chunk(size_t n) {
    g_chunk = n ? n : (size_t)1 << 30;
}

static int mpi_live(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    if (!init) return 0;
    MPI_Finalized(&fin);
    return !fin;
}

int dist_rank(void) {
    int r = 0;
    if (mpi_live()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int dist_size(void) {
    int s = 1;
    if (mpi_live()) MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

static int mpi_fail(const char *what, int rc) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fprintf(stderr, "lathe rank %d: %s: %s\n", dist_rank(), what, msg);
    return -1;
}

int dist_bcast(void *buf, size_t n, int root) {
    if (!mpi_live()) return n == 0 || dist_size() == 1 ? 0 : -1;
    char *p = buf;
    for (size_t off = 0; off < n; off += g_chunk) {
        size_t len = n - off < g_chunk ? n - off : g_chunk;
        int rc = MPI_Bcast(p + off, (int)len, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail("MPI_Bcast", rc);
    }
    return 0;
}

/* A message is an 8-byte length on the tag, then the bytes in chunks of at most g_chunk on the same tag (MPI
 * keeps one sender's messages on one tag in order, so the chunks follow their header). */
int dist_send(int to, int tag, const void *buf, size_t n) {
    if (!mpi_live() || tag < 0 || tag > DIST_TAG_MAX) return -1;
    uint64_t len = n;
    int rc = MPI_Send(&len, 8, MPI_BYTE, to, tag, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail("MPI_Send", rc);
    const char *p = buf;
    for (size_t off = 0; off < n; off += g_chunk) {
        size_t c = n - off < g_chunk ? n - off : g_chunk;
        rc = MPI_Send(p + off, (int)c, MPI_BYTE, to, tag, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail("MPI_Send", rc);
    }
    return 0;
}

int dist_recv(int from, int tag, void **buf, size_t *n, int *from_out) {
    *buf = NULL;
    *n = 0;
    if (!mpi_live() || tag < 0 || tag > DIST_TAG_MAX) return -1;
    uint64_t len = 0;
    MPI_Status st;
    int rc = MPI_Recv(&len, 8, MPI_BYTE, from < 0 ? MPI_ANY_SOURCE : from, tag, MPI_COMM_WORLD, &st);
    if (rc != MPI_SUCCESS) return mpi_fail("MPI_Recv", rc);
    int src = st.MPI_SOURCE;
    char *p = NULL;
    if (len > 0) {
        p = malloc((size_t)len);
        if (!p) {
            fprintf(stderr, "lathe rank %d: out of memory receiving %llu bytes\n", dist_rank(),
                    (unsigned long long)len);
            return -1;
        }
    }
    for (size_t off = 0; off < len; off += g_chunk) {
        size_t c = (size_t)len - off < g_chunk ? (size_t)len - off : g_chunk;
        rc = MPI_Recv(p + off, (int)c, MPI_BYTE, src, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            free(p);
            return mpi_fail("MPI_Recv", rc);
        }
    }
    *buf = p;
    *n = (size_t)len;
    if (from_out) *from_out = src;
    return 0;
}

int dist_probe(int tag, int *from) {
    if (!mpi_live() || tag < 0 || tag > DIST_TAG_MAX) return -1;
    int flag = 0;
    MPI_Status st;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, &flag, &st);
    if (rc != MPI_SUCCESS) return mpi_fail("MPI_Iprobe", rc);
    if (flag && from) *from = st.MPI_SOURCE;
    return flag ? 1 : 0;
}

int dist_allreduce_sum(float *buf, size_t n) {
    if (!mpi_live()) return dist_size() == 1 ? 0 : -1;
    size_t per = g_chunk / sizeof *buf ? g_chunk / sizeof *buf : 1;
    for (size_t off = 0; off < n; off += per) {
        size_t c = n - off < per ? n - off : per;
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail("MPI_Allreduce", rc);
    }
    return 0;
}

int dist_barrier(void) {
    if (!mpi_live()) return dist_size() == 1 ? 0 : -1;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail("MPI_Barrier", rc);
}

/* ---------------------------------------------------------------- small helpers */

static char *dpath(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *dpath(const char *dir, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return lt_path_join(dir, name);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int dist_write_json(const char *path, const json_t *j, lt_err *err) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) return lt_err_set(err, 500, "%s: cannot encode JSON", path);
    int rc = lt_write_file_atomic(path, s, strlen(s), 0644, err);
    free(s);
    return rc;
}

json_t *dist_read_json(const char *path, lt_err *err) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_DECODE_ANY, &je);
    if (!j) lt_err_set(err, 500, "%s: %s (line %d)", path, je.text, je.line);
    return j;
}

char *dist_abs_path(const char *p) {
    if (!p) return NULL;
    char *r = realpath(p, NULL);
    return r ? r : lt_strdup(p);
}

/* OpenMPI's signal handler prints a backtrace after a crash: its frame lines ("[host:pid] [ 3] /lib/...") and
 * banners say less than the lines before them, so rank logs are quoted without them. Filters s in place. */
static size_t drop_backtrace(char *s, size_t len) {
    size_t out = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(s + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - s) + 1 : len;
        const char *line = s + i, *rb = line[0] == '[' ? memchr(line, ']', end - i) : NULL;
        int drop = 0;
        if (rb && (size_t)(rb - line) + 2 < end - i && rb[1] == ' ') {
            const char *r = rb + 2;
            drop = (r[0] == '[' && (r[1] == ' ' || (r[1] >= '0' && r[1] <= '9'))) || !strncmp(r, "*** ", 4) ||
                   !strncmp(r, "Signal code:", 12) || !strncmp(r, "Failing at address", 18);
        }
        if (!drop) {
            memmove(s + out, line, end - i);
            out += end - i;
        }
        i = end;
    }
    s[out] = '\0';
    return out;
}

/* The last max bytes of a file, starting at a line boundary, trailing whitespace trimmed (backtrace lines
 * dropped when clean). "" when absent. */
static char *file_tail(const char *path, size_t max, int clean) {
    size_t len = 0;
    char *s = lt_read_file(path, &len, NULL);
    if (!s) return lt_strdup("");
    if (clean) len = drop_backtrace(s, len);
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\r'))
        s[--len] = '\0';
    size_t start = len > max ? len - max : 0;
    if (start > 0) {
        const char *nl = memchr(s + start, '\n', len - start);
        if (nl && (size_t)(nl - s) + 1 < len) start = (size_t)(nl - s) + 1;
    }
    char *r = lt_strdup(s + start);
    free(s);
    return r;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- rank side: hooks */

typedef struct rank_ctx {
    const char *dir;
    int rank;
    int evfd; /* rank 0: the parent's pipe (mpirun forwards rank 0's stdout); -1 elsewhere */
    int nckpt;
    pthread_mutex_t mu;
    pid_t parent_pid; /* the worker process (job.json parent_pid), on host parent_host */
    char host[256], parent_host[256];
} rank_ctx;

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 0 once the worker process that ran dist_launch is known to be gone (only knowable on its host). */
static int parent_alive(const rank_ctx *c) {
    if (c->parent_pid <= 0 || strcmp(c->host, c->parent_host) != 0) return 1;
    return kill(c->parent_pid, 0) == 0 || errno == EPERM;
}

/* DIR/fail exists: the parent's hook failed; its error becomes ours. */
static int rank_failed(rank_ctx *c, lt_err *err) {
    char *p = lt_path_join(c->dir, "fail");
    int failed = exists(p);
    if (failed) {
        json_t *j = dist_read_json(p, NULL);
        const char *m = json_string_value(json_object_get(j, "message"));
        int code = (int)json_integer_value(json_object_get(j, "code"));
        lt_err_set(err, code ? code : 500, "%s", m ? m : "the worker stopped the distributed run");
        json_decref(j);
    }
    free(p);
    return failed;
}

static int rank_send_line(rank_ctx *c, json_t *msg, lt_err *err) {
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s) return lt_err_set(err, 500, "distributed run: cannot encode an event");
    size_t n = strlen(s);
    s[n] = '\0';
    int rc;
    pthread_mutex_lock(&c->mu);
    rc = write_all(c->evfd, s, n) == 0 && write_all(c->evfd, "\n", 1) == 0 ? 0 : -1;
    pthread_mutex_unlock(&c->mu);
    free(s);
    if (rc != 0)
        return lt_err_set(err, 500, "distributed run: the worker's pipe is gone: %s", strerror(errno));
    return 0;
}

static int rank_event(void *ud, const json_t *event, lt_err *err) {
    rank_ctx *c = ud;
    if (c->rank != 0) return 0;
    if (rank_failed(c, err)) return -1;
    json_t *msg = json_pack("{s:s, s:O}", "t", "event", "event", event);
    int rc = rank_send_line(c, msg, err);
    json_decref(msg);
    return rc;
}

static int rank_checkpoint(void *ud, const char *name, long step, const char *dir, lt_err *err) {
    rank_ctx *c = ud;
    if (c->rank != 0) return 0;
    if (rank_failed(c, err)) return -1;
    int k = ++c->nckpt;
    char *adir = dist_abs_path(dir);
    json_t *msg = json_pack("{s:s, s:i, s:s, s:I, s:s}", "t", "checkpoint", "k", k, "name", name, "step",
                            (json_int_t)step, "dir", adir);
    free(adir);
    int rc = rank_send_line(c, msg, err);
    json_decref(msg);
    if (rc != 0) return -1;
    /* Wait for the parent's answer: the checkpoint is published (or refused) before training goes on. */
    char *ack = dpath(c->dir, "ack-%d", k);
    for (int i = 1; !exists(ack); i++) {
        sleep_ms(5);
        if (i % 200) continue;
        /* Every second: is the parent still there? An empty line makes mpirun fail (broken pipe) when it is
         * not; on the parent's host we can also ask the kernel. */
        if (!parent_alive(c) || write_all(c->evfd, "\n", 1) != 0) {
            free(ack);
            return lt_err_set(err, 500, "distributed run: the worker process is gone; stopping");
        }
    }
    json_t *j = dist_read_json(ack, err);
    free(ack);
    if (!j) return -1;
    rc = 0;
    if (!json_is_true(json_object_get(j, "ok"))) {
        const char *m = json_string_value(json_object_get(j, "message"));
        int code = (int)json_integer_value(json_object_get(j, "code"));
        lt_err_set(err, code ? code : 500, "%s", m ? m : "checkpoint refused by the worker");
        rc = -1;
    }
    json_decref(j);
    return rc;
}

static int rank_stop(void *ud) {
    rank_ctx *c = ud;
    char *s = lt_path_join(c->dir, "stop"), *f = lt_path_join(c->dir, "fail");
    int stop = exists(s) || exists(f) || !parent_alive(c);
    free(s);
    free(f);
    return stop;
}

/* ---------------------------------------------------------------- rank side: entry */

static json_t *err_json(const lt_err *e) {
    return json_pack("{s:i, s:s}", "code", e->code ? e->code : 500, "message", e->msg[0] ? e->msg : "failed");
}

/* This rank's stdout and stderr go to DIR/rank-<r>.log; rank 0 keeps the original stdout (forwarded by mpirun
 * to the parent) for the relay only, so that no stray print can break a JSON line. Returns the relay fd on
 * rank 0, -1 elsewhere. */
static int redirect_output(const char *dir, int rank) {
    int evfd = rank == 0 ? dup(1) : -1;
    if (evfd >= 0) fcntl(evfd, F_SETFD, FD_CLOEXEC);
    char *logp = dpath(dir, "rank-%d.log", rank);
    int lfd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    fflush(stdout);
    fflush(stderr);
    if (lfd >= 0) {
        dup2(lfd, 1);
        dup2(lfd, 2);
        close(lfd);
        setvbuf(stdout, NULL, _IOLBF, 0);
    } else {
        fprintf(stderr, "lathe rl-rank %d: %s: %s (logging to mpirun's stderr)\n", rank, logp,
                strerror(errno));
        dup2(2, 1);
    }
    free(logp);
    return evfd;
}

int dist_rank_entry(const char *dir, int *argc, char ***argv, const dist_rank_mode *modes) {
    /* mpirun tells each rank its number in the environment: redirect before MPI_Init so that its messages
     * land in the rank's log too. */
    const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
    int early = env_rank && *env_rank ? atoi(env_rank) : -1;
    int evfd = early >= 0 ? redirect_output(dir, early) : -1;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "lathe rl-rank: MPI_Init_thread failed (run it under mpirun)\n");
        return 1;
    }
    rank_ctx c = {.dir = dir, .rank = dist_rank(), .evfd = -1, .nckpt = 0};
    pthread_mutex_init(&c.mu, NULL);
    if (early != c.rank) {
        if (evfd >= 0) close(evfd);
        evfd = redirect_output(dir, c.rank);
    }
    c.evfd = evfd;
    signal(SIGPIPE, SIG_IGN);

    lt_err err;
    lt_err_clear(&err);
    tr_hooks h = {.ud = &c, .event = rank_event, .checkpoint = rank_checkpoint, .stop = rank_stop};
    json_t *final = NULL;
    int rc = TR_FAILED;
    char *jp = lt_path_join(dir, "job.json");
    json_t *job = dist_read_json(jp, &err);
    free(jp);
    gethostname(c.host, sizeof c.host - 1);
    if (job) {
        c.parent_pid = (pid_t)json_integer_value(json_object_get(job, "parent_pid"));
        snprintf(c.parent_host, sizeof c.parent_host, "%s",
                 json_string_value(json_object_get(job, "parent_host")) ?: "");
    }
    if (job) {
        const char *mode = json_string_value(json_object_get(job, "mode"));
        const dist_rank_mode *m = modes;
        while (m->name && !(mode && !strcmp(mode, m->name)))
            m++;
        if (m->name)
            rc = m->run(dir, job, &h, &final, &err);
        else
            lt_err_set(&err, 500, "%s/job.json: unknown mode", dir);
    }
    if (rc == TR_FAILED && !err.msg[0]) lt_err_set(&err, 500, "rank %d failed without a message", c.rank);
    if (rc == TR_FAILED) fprintf(stderr, "lathe rl-rank %d: %s\n", c.rank, err.msg);

    json_t *res = json_pack("{s:i, s:i}", "rank", c.rank, "status", rc);
    if (final && c.rank == 0) json_object_set(res, "final_metrics", final);
    if (rc == TR_FAILED) json_object_set_new(res, "error", err_json(&err));
    char *rp = dpath(dir, "rank-%d.json", c.rank);
    lt_err werr;
    if (dist_write_json(rp, res, &werr) != 0) fprintf(stderr, "lathe rl-rank %d: %s\n", c.rank, werr.msg);
    free(rp);
    json_decref(res);
    json_decref(final);
    json_decref(job);
    if (c.evfd >= 0) close(c.evfd);
    fflush(stdout);
    fflush(stderr);
    /* A failed rank takes the others down with it (they may be blocked waiting for it). */
    if (rc == TR_FAILED) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
    pthread_mutex_destroy(&c.mu);
    return rc == TR_FAILED ? 1 : 0;
}

/* ---------------------------------------------------------------- parent side */

/* The program named by name on PATH (or name itself when it has a slash), malloc'd; NULL when none. */
static char *which(const char *name) {
    if (strchr(name, '/')) return access(name, X_OK) == 0 ? lt_strdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path) return NULL;
    char *copy = lt_strdup(path), *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *p = lt_path_join(*d ? d : ".", name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0) {
            free(copy);
            return p;
        }
        free(p);
    }
    free(copy);
    return NULL;
}

typedef struct argv_b {
    char **v;
    int n, cap;
} argv_b;

static void argv_add(argv_b *a, const char *s) {
    if (a->n + 2 > a->cap) {
        a->cap = a->cap ? a->cap * 2 : 32;
        a->v = lt_xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    a->v[a->n++] = lt_strdup(s);
    a->v[a->n] = NULL;
}

static void argv_free(argv_b *a) {
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

static int write_ack(const char *dir, int k, int ok, const lt_err *e, lt_err *err) {
    char *p = dpath(dir, "ack-%d", k);
    json_t *j =
        ok ? json_pack("{s:b}", "ok", 1)
           : json_pack("{s:b, s:i, s:s}", "ok", 0, "code", e->code ? e->code : 500, "message", e->msg);
    int rc = dist_write_json(p, j, err);
    json_decref(j);
    free(p);
    return rc;
}

typedef struct parent_st {
    const char *dir;
    const tr_hooks *h;
    lt_err hook_err; /* the first hook failure */
    int failed;      /* DIR/fail written */
    double fail_t;
    strbuf other; /* stdout lines that are not ours (mpirun's own messages) */
} parent_st;

static void parent_fail(parent_st *p, const lt_err *e) {
    if (p->failed) return;
    p->hook_err = *e;
    p->failed = 1;
    p->fail_t = lt_mono_s();
    char *f = lt_path_join(p->dir, "fail");
    json_t *j = json_pack("{s:i, s:s}", "code", e->code ? e->code : 500, "message", e->msg);
    lt_err ignore;
    dist_write_json(f, j, &ignore);
    json_decref(j);
    free(f);
}

static void parent_line(parent_st *p, const char *line) {
    json_t *m = json_loads(line, 0, NULL);
    const char *t = json_string_value(json_object_get(m, "t"));
    lt_err e;
    lt_err_clear(&e);
    if (t && !strcmp(t, "event") && json_is_object(json_object_get(m, "event"))) {
        if (!p->failed && p->h->event && p->h->event(p->h->ud, json_object_get(m, "event"), &e) != 0)
            parent_fail(p, &e);
    } else if (t && !strcmp(t, "checkpoint")) {
        int k = (int)json_integer_value(json_object_get(m, "k"));
        const char *name = json_string_value(json_object_get(m, "name"));
        const char *dir = json_string_value(json_object_get(m, "dir"));
        long step = (long)json_integer_value(json_object_get(m, "step"));
        int ok = 1;
        if (p->failed) {
            e = p->hook_err;
            ok = 0;
        } else if (!name || !dir) {
            lt_err_set(&e, 500, "distributed run: malformed checkpoint message from rank 0");
            ok = 0;
        } else if (p->h->checkpoint && p->h->checkpoint(p->h->ud, name, step, dir, &e) != 0) {
            parent_fail(p, &e);
            ok = 0;
        }
        lt_err werr;
        if (write_ack(p->dir, k, ok, &e, &werr) != 0) parent_fail(p, &werr);
    } else if (p->other.len < 8192) {
        sb_puts(&p->other, line);
        sb_putc(&p->other, '\n');
    }
    json_decref(m);
}

/* Which rank mpirun says went wrong ("process rank N", "rank N" in MPI_ABORT messages), or -1. */
static int noticed_rank(const char *log) {
    const char *pats[] = {"process rank ", "on rank ", NULL};
    for (int i = 0; pats[i]; i++) {
        const char *s = log ? strstr(log, pats[i]) : NULL;
        if (s) return atoi(s + strlen(pats[i]));
    }
    return -1;
}

/* Lines joined with " | " (a message is one line). malloc'd. */
static char *squash(const char *s) {
    strbuf b = STRBUF_INIT;
    for (; *s; s++)
        if (*s == '\n')
            sb_puts(&b, " | ");
        else
            sb_putc(&b, *s);
    if (!b.buf) sb_puts(&b, "");
    if (!lt_utf8_valid(b.buf, b.len)) /* a cut multi-byte character, binary output: keep it JSON-safe */
        for (size_t i = 0; i < b.len; i++)
            if ((unsigned char)b.buf[i] >= 0x80) b.buf[i] = '?';
    return sb_steal(&b);
}

/* No rank reported a result or an error: a crash. The error names the rank mpirun noticed (or the first that
 * started and left no result) and quotes its log, else mpirun's own output. Returns TR_FAILED. */
static int crash_error(const char *dir, int nranks, int wstatus, const parent_st *p, lt_err *err) {
    char *mlog_p = lt_path_join(dir, "mpirun.log");
    char *mlog = file_tail(mlog_p, 4000, 0);
    int bad = noticed_rank(mlog);
    if (bad >= nranks) bad = -1;
    /* mpirun named none: the first rank that started (it has a log) but left no result. */
    for (int r = 0; r < nranks && bad < 0; r++) {
        char *rp = dpath(dir, "rank-%d.json", r), *lp = dpath(dir, "rank-%d.log", r);
        if (exists(lp) && !exists(rp)) bad = r;
        free(rp);
        free(lp);
    }
    char status[64];
    if (WIFEXITED(wstatus))
        snprintf(status, sizeof status, "exit status %d", WEXITSTATUS(wstatus));
    else
        snprintf(status, sizeof status, "signal %d", WTERMSIG(wstatus));
    char *tail = NULL, *where = NULL;
    if (bad >= 0) {
        where = dpath(dir, "rank-%d.log", bad);
        tail = file_tail(where, 400, 1);
    }
    if (tail && tail[0]) {
        /* mpirun's one-line verdict ("mpirun noticed that process rank 2 ... exited on signal 6 (Aborted).")
         */
        char how[200] = "";
        const char *nt = mlog ? strstr(mlog, "exited on signal") : NULL;
        if (nt) {
            size_t k = strcspn(nt, ".\n");
            snprintf(how, sizeof how, ", %.*s", (int)(k < 120 ? k : 120), nt);
        }
        char *sq = squash(tail);
        lt_err_set(
            err, 500,
            "distributed run failed: rank %d ended without a result (mpirun %s%s); last lines of %s: %s", bad,
            status, how, where, sq);
        free(sq);
    } else {
        char *mt = file_tail(mlog_p, 500, 0);
        if (!mt[0] && p->other.len) {
            free(mt);
            mt = lt_strdup(p->other.buf);
        }
        char *sq = squash(mt);
        char who[32] = "";
        if (bad >= 0) snprintf(who, sizeof who, " (rank %d)", bad);
        lt_err_set(err, 500,
                   "distributed run failed: mpirun %s%s; %s: %s (check LATHE_MPI_HOSTFILE, that every host "
                   "has this lathe binary and the shared directories, see docs/distributed.md)",
                   status, who, mlog_p, sq[0] ? sq : "(empty)");
        free(sq);
        free(mt);
    }
    free(tail);
    free(where);
    free(mlog);
    free(mlog_p);
    return TR_FAILED;
}

/* After mpirun exited: the run's status from the ranks' result files, or an error explaining the failure. */
static int parent_result(const char *dir, int nranks, int wstatus, parent_st *p, json_t **final,
                         lt_err *err) {
    lt_err ignore;
    char *r0p = lt_path_join(dir, "rank-0.json");
    json_t *r0 = exists(r0p) ? dist_read_json(r0p, &ignore) : NULL;
    free(r0p);
    int st0 = r0 ? (int)json_integer_value(json_object_get(r0, "status")) : TR_FAILED;
    if (p->failed) { /* the worker's own hook failed: that is the error to report */
        json_decref(r0);
        *err = p->hook_err;
        return TR_FAILED;
    }
    if (r0 && (st0 == TR_DONE || st0 == TR_STOPPED)) {
        json_t *fm = json_object_get(r0, "final_metrics");
        if (final) *final = json_is_object(fm) ? json_incref(fm) : NULL;
        json_decref(r0);
        if (!(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0)) {
            lt_err le;
            tr_log(p->h, "warning", &le,
                   "distributed run: mpirun exited with status %d after rank 0 finished",
                   WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus));
        }
        return st0;
    }
    /* A rank reported its error: rank 0's first, then the others'. */
    for (int r = 0; r < nranks; r++) {
        char *rp = dpath(dir, "rank-%d.json", r);
        json_t *j = r == 0 ? json_incref(r0) : exists(rp) ? dist_read_json(rp, &ignore) : NULL;
        free(rp);
        json_t *e = json_object_get(j, "error");
        if (json_is_object(e)) {
            const char *m = json_string_value(json_object_get(e, "message"));
            int code = (int)json_integer_value(json_object_get(e, "code"));
            if (r == 0)
                lt_err_set(err, code ? code : 500, "%s", m ? m : "rank 0 failed");
            else
                lt_err_set(err, code ? code : 500, "distributed run: rank %d (rollout worker): %s", r,
                           m ? m : "failed");
            json_decref(j);
            json_decref(r0);
            return TR_FAILED;
        }
        json_decref(j);
    }
    json_decref(r0);
    return crash_error(dir, nranks, wstatus, p, err);
}

/* The programs to run: mpirun (LATHE_MPIRUN or PATH) into *mpirun (malloc'd) and the ranks' program
 * (LATHE_RANK_EXE or this binary) into exe. */
static int find_programs(char **mpirun, char exe[PATH_MAX], lt_err *err) {
    const char *mpirun_name = getenv("LATHE_MPIRUN");
    if (!mpirun_name || !*mpirun_name) mpirun_name = "mpirun";
    *mpirun = which(mpirun_name);
    if (!*mpirun)
        return lt_err_set(err, 500,
                          "execution_mode distributed needs OpenMPI, but '%s' was not found on PATH: install "
                          "openmpi-bin (scripts/setup.sh), or set LATHE_MPIRUN to the mpirun program",
                          mpirun_name);
    const char *rank_exe = getenv("LATHE_RANK_EXE");
    if (rank_exe && *rank_exe) {
        snprintf(exe, PATH_MAX, "%s", rank_exe);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 1);
    if (n <= 0) {
        free(*mpirun);
        *mpirun = NULL;
        return lt_err_set(err, 500, "distributed run: cannot read /proc/self/exe: %s", strerror(errno));
    }
    exe[n] = '\0';
    return 0;
}

/* mpirun's command line (dist.h): -np, the hostfile (checked here, so that a typo is our error and not
 * mpirun's), the container flags, LATHE_MPI_ARGS, then `<exe> rl-rank DIR`. */
static int mpirun_argv(argv_b *a, const char *mpirun, int nranks, const char *exe, const char *dir,
                       lt_err *err) {
    argv_add(a, mpirun);
    argv_add(a, "-np");
    char num[16];
    snprintf(num, sizeof num, "%d", nranks);
    argv_add(a, num);
    const char *hostfile = getenv("LATHE_MPI_HOSTFILE");
    if (hostfile && *hostfile) {
        struct stat hst;
        if (stat(hostfile, &hst) != 0 || !S_ISREG(hst.st_mode) || access(hostfile, R_OK) != 0) {
            const char *why = stat(hostfile, &hst) != 0 ? strerror(errno)
                              : !S_ISREG(hst.st_mode)   ? "not a file"
                                                        : strerror(EACCES);
            return lt_err_set(
                err, 400,
                "LATHE_MPI_HOSTFILE / --hostfile %s: %s (an OpenMPI hostfile: one 'HOST slots=N' "
                "a line; see docs/distributed.md)",
                hostfile, why);
        }
        argv_add(a, "--hostfile");
        argv_add(a, hostfile);
    }
    if (geteuid() == 0) argv_add(a, "--allow-run-as-root");
    argv_add(a, "--oversubscribe");
    argv_add(a, "--bind-to");
    argv_add(a, "none");
    const char *extra = getenv("LATHE_MPI_ARGS");
    if (extra && *extra) {
        char *copy = lt_strdup(extra), *save = NULL;
        for (char *t = strtok_r(copy, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
            argv_add(a, t);
        free(copy);
    }
    argv_add(a, exe);
    argv_add(a, "rl-rank");
    argv_add(a, dir);
    return 0;
}

/* Environment: ours, plus what OpenMPI needs to run as root in a container, and no single-copy (CMA)
 * shared-memory transfers, which containers without ptrace permission refuse. */
static void mpirun_env(argv_b *env) {
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "OMPI_ALLOW_RUN_AS_ROOT", 22) != 0) argv_add(env, *e);
    argv_add(env, "OMPI_ALLOW_RUN_AS_ROOT=1");
    argv_add(env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
    if (!getenv("OMPI_MCA_btl_vader_single_copy_mechanism"))
        argv_add(env, "OMPI_MCA_btl_vader_single_copy_mechanism=none");
}

/* Starts mpirun with stdin /dev/null, stdout a pipe (rank 0's relay lines: *rfd, the read end) and stderr
 * DIR/mpirun.log. *pid is -1 when it did not start. */
static int spawn_mpirun(const char *mpirun, const argv_b *a, const argv_b *env, const char *dir, pid_t *pid,
                        int *rfd, lt_err *err) {
    *pid = -1;
    *rfd = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return lt_err_set(err, 500, "distributed run: pipe: %s", strerror(errno));
    char *mlog_p = lt_path_join(dir, "mpirun.log");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, mlog_p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    int se = posix_spawn(pid, mpirun, &fa, NULL, a->v, env->v);
    posix_spawn_file_actions_destroy(&fa);
    free(mlog_p);
    close(fds[1]);
    if (se != 0) {
        *pid = -1;
        close(fds[0]);
        return lt_err_set(err, 500,
                          "distributed run: cannot start %s: %s (install openmpi-bin: scripts/setup.sh)",
                          mpirun, strerror(se));
    }
    *rfd = fds[0];
    return 0;
}

/* The parent's side of a stop: DIR/stop once h->stop() turns 1; then the ranks get stop_grace seconds to
 * honour it (a checkpoint to write) and 60 s to notice DIR/fail, after which mpirun is told to end the job
 * (SIGTERM, SIGKILL 30 s later). */
typedef struct stop_st {
    int written, term_sent;
    double stop_t, term_t, grace;
} stop_st;

static void relay_stop(parent_st *p, stop_st *s, pid_t pid) {
    const tr_hooks *h = p->h;
    if (!s->written && h->stop && h->stop(h->ud)) {
        char *sp = lt_path_join(p->dir, "stop");
        lt_err ignore;
        lt_write_file_atomic(sp, "1\n", 2, 0644, &ignore);
        free(sp);
        s->written = 1;
        s->stop_t = lt_mono_s();
    }
    double now = lt_mono_s();
    if (!s->term_sent &&
        ((p->failed && now - p->fail_t > 60) || (s->written && now - s->stop_t > s->grace))) {
        kill(pid, SIGTERM);
        s->term_sent = 1;
        s->term_t = now;
        if (!p->failed) {
            lt_err e;
            lt_err_set(&e, 500,
                       "distributed run: the ranks did not stop within %.0f s of the stop request "
                       "(LATHE_DIST_STOP_GRACE_S); mpirun was terminated",
                       s->grace);
            parent_fail(p, &e);
        }
    }
    if (s->term_sent == 1 && now - s->term_t > 30) {
        kill(pid, SIGKILL);
        s->term_sent = 2;
    }
}

/* Reads rank 0's lines from fd until mpirun closes it, passing each to parent_line, and relays a stop. */
static void relay(parent_st *p, int fd, pid_t pid) {
    strbuf line = STRBUF_INIT;
    const char *sg = getenv("LATHE_DIST_STOP_GRACE_S");
    stop_st s = {.grace = sg && atof(sg) > 0 ? atof(sg) : 600};
    char rbuf[65536];
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = poll(&pf, 1, 100);
        if (pr < 0 && errno != EINTR) break;
        if (pr > 0) {
            ssize_t n = read(fd, rbuf, sizeof rbuf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break; /* EOF: mpirun is done */
            for (ssize_t i = 0; i < n; i++) {
                if (rbuf[i] == '\n') {
                    if (line.len) parent_line(p, line.buf);
                    sb_reset(&line);
                } else
                    sb_putc(&line, rbuf[i]);
            }
        }
        relay_stop(p, &s, pid);
    }
    if (line.len) parent_line(p, line.buf);
    sb_free(&line);
}

/* Runs mpirun on DIR (job.json written) and relays until it exits; the result is parent_result's. */
static int launch(const char *dir, const tr_hooks *h, int nranks, json_t **final, lt_err *err) {
    if (nranks < 1)
        return lt_err_set(err, 400, "distributed run: %d ranks requested, need at least 1", nranks);
    char *mpirun = NULL, exe[PATH_MAX];
    if (find_programs(&mpirun, exe, err) != 0) return TR_FAILED;
    argv_b a = {0}, env = {0};
    int rc = TR_FAILED, rfd = -1;
    pid_t pid = -1;
    if (mpirun_argv(&a, mpirun, nranks, exe, dir, err) != 0) goto out;
    mpirun_env(&env);
    if (spawn_mpirun(mpirun, &a, &env, dir, &pid, &rfd, err) != 0) goto out;
    parent_st p = {.dir = dir, .h = h, .other = STRBUF_INIT};
    lt_err_clear(&p.hook_err);
    relay(&p, rfd, pid);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    rc = parent_result(dir, nranks, ws, &p, final, err);
    sb_free(&p.other);
out:
    if (rfd >= 0) close(rfd);
    argv_free(&a);
    argv_free(&env);
    free(mpirun);
    return rc;
}

/* Who the ranks report to: they stop when this process is gone (on its host). */
static void add_parent(json_t *job) {
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    json_object_set_new(job, "parent_pid", json_integer(getpid()));
    json_object_set_new(job, "parent_host", json_string(host));
}

int dist_launch(const char *dir, json_t *job, const tr_hooks *h, int nranks, json_t **final_metrics,
                lt_err *err) {
    if (final_metrics) *final_metrics = NULL;
    add_parent(job);
    char *jp = lt_path_join(dir, "job.json");
    int rc = dist_write_json(jp, job, err) == 0 ? launch(dir, h, nranks, final_metrics, err) : TR_FAILED;
    free(jp);
    return rc;
}

char *dist_prepare_dir(const char *work_dir, lt_err *err) {
    if (!work_dir) {
        lt_err_set(err, 500, "distributed run: no work directory");
        return NULL;
    }
    char *wd = dist_abs_path(work_dir);
    char *dir = lt_path_join(wd, "dist");
    free(wd);
    lt_rm_rf(dir);
    if (lt_mkdir_p(dir, 0755, err) != 0) {
        free(dir);
        return NULL;
    }
    return dir;
}
