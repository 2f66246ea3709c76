/* dist.c: distributed Ray GRPO under OpenMPI: the parent-side launcher (dist_run), the rank-side entry
 * (dist_rank_entry) with hooks relayed to the parent, the transport, and the transport self-test. See dist.h
 * for the protocol and docs/distributed.md for running ranks on several machines. */
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

#pragma weak tr_rl_rank_main

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

static int write_json(const char *path, const json_t *j, lt_err *err) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) return lt_err_set(err, 500, "%s: cannot encode JSON", path);
    int rc = lt_write_file_atomic(path, s, strlen(s), 0644, err);
    free(s);
    return rc;
}

static json_t *read_json(const char *path, lt_err *err) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_DECODE_ANY, &je);
    if (!j) lt_err_set(err, 500, "%s: %s (line %d)", path, je.text, je.line);
    return j;
}

static char *abs_path(const char *p) {
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

/* ---------------------------------------------------------------- rows (de)serialisation */

json_t *dist_rows_to_json(const rows_set *s) {
    json_t *o = json_object();
    json_object_set_new(o, "rows", s->rows ? json_incref(s->rows) : json_array());
    json_t *lines = json_array(), *file = json_array(), *files = json_array(), *splits = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_array_append_new(lines, json_integer(s->lines ? s->lines[i] : 0));
        json_array_append_new(file, json_integer(s->file ? (json_int_t)s->file[i] : 0));
    }
    for (size_t k = 0; k < s->nfiles; k++) {
        json_array_append_new(files, json_string(s->files[k] ? s->files[k] : ""));
        json_array_append_new(splits, json_string(s->splits && s->splits[k] ? s->splits[k] : ""));
    }
    json_object_set_new(o, "lines", lines);
    json_object_set_new(o, "file", file);
    json_object_set_new(o, "files", files);
    json_object_set_new(o, "splits", splits);
    return o;
}

int dist_rows_from_json(const json_t *o, rows_set *s, const char *path, lt_err *err) {
    memset(s, 0, sizeof *s);
    json_t *rows = json_object_get(o, "rows"), *lines = json_object_get(o, "lines"),
           *file = json_object_get(o, "file"), *files = json_object_get(o, "files"),
           *splits = json_object_get(o, "splits");
    if (!json_is_array(rows) || !json_is_array(lines) || !json_is_array(file) || !json_is_array(files) ||
        !json_is_array(splits) || json_array_size(lines) != json_array_size(rows) ||
        json_array_size(file) != json_array_size(rows) || json_array_size(splits) != json_array_size(files))
        return lt_err_set(err, 500, "%s: not a rows file written by dist_run", path);
    s->n = s->cap = json_array_size(rows);
    s->nfiles = json_array_size(files);
    s->rows = json_incref(rows);
    s->lines = calloc(s->n ? s->n : 1, sizeof *s->lines);
    s->file = calloc(s->n ? s->n : 1, sizeof *s->file);
    s->files = calloc(s->nfiles ? s->nfiles : 1, sizeof *s->files);
    s->splits = calloc(s->nfiles ? s->nfiles : 1, sizeof *s->splits);
    if (!s->lines || !s->file || !s->files || !s->splits) abort();
    for (size_t i = 0; i < s->n; i++) {
        s->lines[i] = (long)json_integer_value(json_array_get(lines, i));
        s->file[i] = (size_t)json_integer_value(json_array_get(file, i));
    }
    for (size_t k = 0; k < s->nfiles; k++) {
        s->files[k] = lt_strdup(json_string_value(json_array_get(files, k)) ?: "");
        s->splits[k] = lt_strdup(json_string_value(json_array_get(splits, k)) ?: "");
    }
    return 0;
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

/* 0 once the worker process that ran dist_run is known to be gone (only knowable on its host). */
static int parent_alive(const rank_ctx *c) {
    if (c->parent_pid <= 0 || strcmp(c->host, c->parent_host) != 0) return 1;
    return kill(c->parent_pid, 0) == 0 || errno == EPERM;
}

/* DIR/fail exists: the parent's hook failed; its error becomes ours. */
static int rank_failed(rank_ctx *c, lt_err *err) {
    char *p = lt_path_join(c->dir, "fail");
    int failed = exists(p);
    if (failed) {
        json_t *j = read_json(p, NULL);
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
    char *adir = abs_path(dir);
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
    json_t *j = read_json(ack, err);
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

/* ---------------------------------------------------------------- rank side: self-test */

#define CHECK_TAG 7

static int check_fail(lt_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check_fail(lt_err *err, const char *fmt, ...) {
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return lt_err_set(err, 500, "rl-rank --check, rank %d: %s", dist_rank(), m);
}

static int check_event(const tr_hooks *h, int step, int total, double x, lt_err *err) {
    json_t *ev = json_pack("{s:s, s:{s:[i], s:[f]}, s:{s:i, s:i}}", "event_type", "step_complete", "metrics",
                           "steps", step, "train/check", x, "data", "step", step, "total_steps", total);
    int rc = h->event(h->ud, ev, err);
    json_decref(ev);
    return rc;
}

int dist_selftest(const json_t *job, const tr_hooks *h, json_t **final_metrics, lt_err *err) {
    int r = dist_rank(), n = dist_size();
    json_int_t chunk = json_integer_value(json_object_get(job, "chunk"));
    if (chunk > 0) dist_set_chunk((size_t)chunk);
    int crash_rank = json_is_integer(json_object_get(job, "crash_rank"))
                         ? (int)json_integer_value(json_object_get(job, "crash_rank"))
                         : -1;
    const char *work_dir = json_string_value(json_object_get(job, "work_dir"));
    int ignore_stop = json_is_true(json_object_get(job, "ignore_stop"));

    /* 1. bcast of a float buffer (several chunks when chunk is small). */
    size_t nf = 10007;
    float *fb = calloc(nf, sizeof *fb);
    if (!fb) abort();
    if (r == 0)
        for (size_t i = 0; i < nf; i++)
            fb[i] = (float)i * 0.5f;
    if (dist_bcast(fb, nf * sizeof *fb, 0) != 0) {
        free(fb);
        return check_fail(err, "dist_bcast failed");
    }
    for (size_t i = 0; i < nf; i++)
        if (fb[i] != (float)i * 0.5f) {
            double got = fb[i];
            free(fb);
            return check_fail(err, "dist_bcast: element %zu is %g, expected %g", i, got, (double)i * 0.5);
        }
    free(fb);
    /* allreduce: rank k contributes k+1 at element i -> everyone gets (i+1) * n(n+1)/2 */
    size_t na = 3001;
    float *ab = malloc(na * sizeof *ab);
    if (!ab) abort();
    for (size_t i = 0; i < na; i++)
        ab[i] = (float)((i % 7 + 1) * (size_t)(r + 1));
    if (dist_allreduce_sum(ab, na) != 0) {
        free(ab);
        return check_fail(err, "dist_allreduce_sum failed");
    }
    for (size_t i = 0; i < na; i++) {
        float want = (float)((i % 7 + 1) * (size_t)n * (size_t)(n + 1) / 2);
        if (ab[i] != want) {
            double got = ab[i];
            free(ab);
            return check_fail(err, "dist_allreduce_sum: element %zu is %g, expected %g", i, got,
                              (double)want);
        }
    }
    free(ab);
    if (r == crash_rank) {
        fprintf(stderr, "rl-rank --check: rank %d crashing on purpose (--crash-rank)\n", r);
        fflush(stderr);
        abort();
    }

    /* 2. sends from every rank > 0 to 0: rank k sends k*3001+5 bytes, byte i = (k*31 + i) % 251. */
    long received = 0;
    size_t bytes = 0;
    if (r > 0) {
        size_t len = (size_t)r * 3001 + 5;
        unsigned char *b = malloc(len);
        if (!b) abort();
        for (size_t i = 0; i < len; i++)
            b[i] = (unsigned char)(((size_t)r * 31 + i) % 251);
        int rc = dist_send(0, CHECK_TAG, b, len);
        free(b);
        if (rc != 0) return check_fail(err, "dist_send to rank 0 failed");
    } else {
        int *seen = calloc((size_t)n, sizeof *seen);
        if (!seen) abort();
        for (int got = 0; got < n - 1;) {
            int from = -1, p = dist_probe(CHECK_TAG, &from);
            if (p < 0) {
                free(seen);
                return check_fail(err, "dist_probe failed");
            }
            if (p == 0) {
                sleep_ms(1);
                continue;
            }
            void *buf = NULL;
            size_t len = 0;
            int src = -1;
            if (dist_recv(-1, CHECK_TAG, &buf, &len, &src) != 0) {
                free(seen);
                return check_fail(err, "dist_recv failed");
            }
            unsigned char *b = buf;
            int bad = src <= 0 || src >= n || seen[src] || len != (size_t)src * 3001 + 5;
            for (size_t i = 0; !bad && i < len; i++)
                bad = b[i] != (unsigned char)(((size_t)src * 31 + i) % 251);
            free(buf);
            if (bad) {
                free(seen);
                return check_fail(err, "message from rank %d (probed %d): wrong size or contents", src, from);
            }
            seen[src] = 1;
            got++;
            received++;
            bytes += len;
        }
        free(seen);
        if (dist_probe(CHECK_TAG, NULL) != 0) return check_fail(err, "dist_probe: a message too many");
    }

    /* 3. events and a checkpoint through the hooks (relayed by rank 0 only). */
    int steps = 3;
    for (int s = 1; s <= steps; s++)
        if (check_event(h, s, steps, (double)s / 4, err) != 0) return -1;
    if (r == 0 && work_dir) {
        char name[64];
        tr_checkpoint_name(name, sizeof name, 1, steps);
        char *cdir = lt_path_join(work_dir, name);
        int rc = lt_mkdir_p(cdir, 0755, err);
        if (rc == 0) {
            char *f = lt_path_join(cdir, "check.json");
            rc = lt_write_file_atomic(f, "{\"check\":true}\n", 15, 0644, err);
            free(f);
        }
        if (rc == 0) rc = h->checkpoint(h->ud, name, steps, cdir, err);
        free(cdir);
        if (rc != 0) return -1;
    }

    /* 4. stop: rank 0 polls h->stop and broadcasts its decision, until the parent asks (max 120 s). */
    int stopped = 0;
    if (json_is_true(json_object_get(job, "wait_stop"))) {
        if (r == 0) {
            json_t *ev = json_pack("{s:s, s:s, s:{s:b}}", "message", "rl-rank --check: waiting for stop",
                                   "level", "info", "data", "waiting_for_stop", 1);
            int rc = h->event(h->ud, ev, err);
            json_decref(ev);
            if (rc != 0) return -1;
        }
        double t0 = lt_mono_s();
        for (;;) {
            int flag = r == 0 ? (!ignore_stop && h->stop(h->ud) ? 1 : lt_mono_s() - t0 > 120 ? 2 : 0) : 0;
            if (dist_bcast(&flag, sizeof flag, 0) != 0) return check_fail(err, "dist_bcast failed");
            if (flag == 2) return check_fail(err, "no stop request within 120 s");
            if (flag) break;
            sleep_ms(5);
        }
        stopped = 1;
    }

    if (final_metrics && r == 0)
        *final_metrics = json_pack("{s:i, s:I, s:I}", "check/ranks", n, "check/messages",
                                   (json_int_t)received, "check/bytes", (json_int_t)bytes);
    return stopped ? TR_STOPPED : TR_DONE;
}

/* ---------------------------------------------------------------- rank side: entry */

static json_t *err_json(const lt_err *e) {
    return json_pack("{s:i, s:s}", "code", e->code ? e->code : 500, "message", e->msg[0] ? e->msg : "failed");
}

static int load_rows(const char *dir, const char *name, rows_set *s, int *have, lt_err *err) {
    *have = 0;
    char *p = dpath(dir, "%s.json", name);
    if (!exists(p)) {
        free(p);
        return 0;
    }
    json_t *j = read_json(p, err);
    int rc = j ? dist_rows_from_json(j, s, p, err) : -1;
    json_decref(j);
    free(p);
    if (rc == 0) *have = 1;
    return rc;
}

static int run_rl_rank(const char *dir, const json_t *job, const tr_hooks *h, json_t **final, lt_err *err) {
    if (!tr_rl_rank_main)
        return lt_err_set(err, 500,
                          "this lathe build has no distributed GRPO trainer (tr_rl_rank_main): rebuild with "
                          "src/train/rl.c");
    tr_inputs in;
    memset(&in, 0, sizeof in);
    rows_set train, traj, eval;
    int have_train = 0, have_traj = 0, have_eval = 0;
    memset(&train, 0, sizeof train);
    memset(&traj, 0, sizeof traj);
    memset(&eval, 0, sizeof eval);
    eng_engine *base = NULL;
    eng_tokenizer *tok = NULL;
    int rc = TR_FAILED;
    if (load_rows(dir, "train", &train, &have_train, err) != 0 ||
        load_rows(dir, "trajectories", &traj, &have_traj, err) != 0 ||
        load_rows(dir, "eval", &eval, &have_eval, err) != 0)
        goto out;
    const char *model_dir = json_string_value(json_object_get(job, "model_dir"));
    const char *model_id = json_string_value(json_object_get(job, "model_id"));
    int threads = (int)json_integer_value(json_object_get(job, "threads"));
    if (threads < 1) threads = 1;
    eng_set_threads(threads);
    if (!model_dir) {
        lt_err_set(err, 500, "%s/job.json: no model_dir", dir);
        goto out;
    }
    base = eng_open(model_dir, NULL, model_id, err);
    if (!base) {
        lt_err_prefix(err, "rank %d: base model %s: ", dist_rank(), model_dir ? model_dir : "(none)");
        goto out;
    }
    tok = eng_tok_load(model_dir, err);
    if (!tok) {
        lt_err_prefix(err, "rank %d: ", dist_rank());
        goto out;
    }
    const char *seed = json_string_value(json_object_get(job, "seed"));
    in.job = json_object_get(job, "job");
    in.eff = json_object_get(job, "eff");
    in.base = base;
    in.tok = tok;
    in.model_id = model_id;
    in.model_dir = model_dir;
    in.init_adapter = json_string_value(json_object_get(job, "init_adapter"));
    in.capability_prompt = json_string_value(json_object_get(job, "capability_prompt")) ?: "";
    in.train = have_train ? &train : NULL;
    in.trajectories = have_traj ? &traj : NULL;
    in.eval = have_eval ? &eval : NULL;
    in.dataset_name = json_string_value(json_object_get(job, "dataset_name")) ?: "";
    in.task = json_object_get(job, "task");
    if (json_is_null(in.task)) in.task = NULL;
    in.work_dir = json_string_value(json_object_get(job, "work_dir"));
    in.resume_dir = json_string_value(json_object_get(job, "resume_dir"));
    in.threads = threads;
    in.seed = seed ? strtoull(seed, NULL, 10) : 0;
    rc = tr_rl_rank_main(&in, h, final, err);
out:
    eng_tok_free(tok);
    eng_close(base);
    rows_set_free(&train);
    rows_set_free(&traj);
    rows_set_free(&eval);
    return rc;
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

int dist_rank_entry(const char *dir, int *argc, char ***argv) {
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
    json_t *job = read_json(jp, &err);
    free(jp);
    gethostname(c.host, sizeof c.host - 1);
    if (job) {
        c.parent_pid = (pid_t)json_integer_value(json_object_get(job, "parent_pid"));
        snprintf(c.parent_host, sizeof c.parent_host, "%s",
                 json_string_value(json_object_get(job, "parent_host")) ?: "");
    }
    if (job) {
        const char *mode = json_string_value(json_object_get(job, "mode"));
        if (mode && !strcmp(mode, "check"))
            rc = dist_selftest(job, &h, &final, &err);
        else if (mode && !strcmp(mode, "rl"))
            rc = run_rl_rank(dir, job, &h, &final, &err);
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
    if (write_json(rp, res, &werr) != 0) fprintf(stderr, "lathe rl-rank %d: %s\n", c.rank, werr.msg);
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
        a->v = realloc(a->v, (size_t)a->cap * sizeof *a->v);
        if (!a->v) abort();
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
    int rc = write_json(p, j, err);
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
    write_json(f, j, &ignore);
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

/* After mpirun exited: the run's status from the ranks' result files, or an error explaining the failure. */
static int parent_result(const char *dir, int nranks, int wstatus, parent_st *p, json_t **final,
                         lt_err *err) {
    lt_err ignore;
    char *r0p = lt_path_join(dir, "rank-0.json");
    json_t *r0 = exists(r0p) ? read_json(r0p, &ignore) : NULL;
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
        json_t *j = r == 0 ? json_incref(r0) : exists(rp) ? read_json(rp, &ignore) : NULL;
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
    /* A crash: name the rank mpirun noticed and quote its log. */
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

static int launch(const char *dir, const tr_hooks *h, int nranks, json_t **final, lt_err *err) {
    if (final) *final = NULL;
    if (nranks < 1)
        return lt_err_set(err, 400, "distributed run: %d ranks requested, need at least 1", nranks);
    const char *mpirun_name = getenv("LATHE_MPIRUN");
    if (!mpirun_name || !*mpirun_name) mpirun_name = "mpirun";
    char *mpirun = which(mpirun_name);
    if (!mpirun)
        return lt_err_set(err, 500,
                          "execution_mode distributed needs OpenMPI, but '%s' was not found on PATH: install "
                          "openmpi-bin (scripts/setup.sh), or set LATHE_MPIRUN to the mpirun program",
                          mpirun_name);
    char exe[PATH_MAX];
    const char *rank_exe = getenv("LATHE_RANK_EXE");
    if (!rank_exe || !*rank_exe) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            free(mpirun);
            return lt_err_set(err, 500, "distributed run: cannot read /proc/self/exe: %s", strerror(errno));
        }
        exe[n] = '\0';
        rank_exe = exe;
    }

    argv_b a = {0};
    argv_add(&a, mpirun);
    argv_add(&a, "-np");
    char num[16];
    snprintf(num, sizeof num, "%d", nranks);
    argv_add(&a, num);
    const char *hostfile = getenv("LATHE_MPI_HOSTFILE");
    if (hostfile && *hostfile) {
        struct stat hst;
        if (stat(hostfile, &hst) != 0 || !S_ISREG(hst.st_mode) || access(hostfile, R_OK) != 0) {
            const char *why = stat(hostfile, &hst) != 0 ? strerror(errno)
                              : !S_ISREG(hst.st_mode)   ? "not a file"
                                                        : strerror(EACCES);
            argv_free(&a);
            free(mpirun);
            return lt_err_set(
                err, 400,
                "LATHE_MPI_HOSTFILE / --hostfile %s: %s (an OpenMPI hostfile: one 'HOST slots=N' "
                "a line; see docs/distributed.md)",
                hostfile, why);
        }
        argv_add(&a, "--hostfile");
        argv_add(&a, hostfile);
    }
    if (geteuid() == 0) argv_add(&a, "--allow-run-as-root");
    argv_add(&a, "--oversubscribe");
    argv_add(&a, "--bind-to");
    argv_add(&a, "none");
    const char *extra = getenv("LATHE_MPI_ARGS");
    if (extra && *extra) {
        char *copy = lt_strdup(extra), *save = NULL;
        for (char *t = strtok_r(copy, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
            argv_add(&a, t);
        free(copy);
    }
    argv_add(&a, rank_exe);
    argv_add(&a, "rl-rank");
    argv_add(&a, dir);

    /* Environment: ours, plus what OpenMPI needs to run as root in a container, and no single-copy (CMA)
     * shared-memory transfers, which containers without ptrace permission refuse. */
    argv_b env = {0};
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "OMPI_ALLOW_RUN_AS_ROOT", 22) != 0) argv_add(&env, *e);
    argv_add(&env, "OMPI_ALLOW_RUN_AS_ROOT=1");
    argv_add(&env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
    if (!getenv("OMPI_MCA_btl_vader_single_copy_mechanism"))
        argv_add(&env, "OMPI_MCA_btl_vader_single_copy_mechanism=none");

    char *mlog_p = lt_path_join(dir, "mpirun.log");
    int fds[2] = {-1, -1};
    int rc = TR_FAILED;
    pid_t pid = -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (pipe2(fds, O_CLOEXEC) != 0) {
        lt_err_set(err, 500, "distributed run: pipe: %s", strerror(errno));
        goto out;
    }
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, mlog_p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    int se = posix_spawn(&pid, mpirun, &fa, NULL, a.v, env.v);
    close(fds[1]);
    fds[1] = -1;
    if (se != 0) {
        lt_err_set(err, 500, "distributed run: cannot start %s: %s (install openmpi-bin: scripts/setup.sh)",
                   mpirun, strerror(se));
        pid = -1;
        goto out;
    }

    parent_st p = {.dir = dir, .h = h, .other = STRBUF_INIT};
    lt_err_clear(&p.hook_err);
    strbuf line = STRBUF_INIT;
    int stop_written = 0, term_sent = 0;
    double stop_t = 0, term_t = 0;
    const char *sg = getenv("LATHE_DIST_STOP_GRACE_S");
    double stop_grace = sg && atof(sg) > 0 ? atof(sg) : 600;
    char rbuf[65536];
    for (;;) {
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&pf, 1, 100);
        if (pr < 0 && errno != EINTR) break;
        if (pr > 0) {
            ssize_t n = read(fds[0], rbuf, sizeof rbuf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break; /* EOF: mpirun is done */
            for (ssize_t i = 0; i < n; i++) {
                if (rbuf[i] == '\n') {
                    if (line.len) parent_line(&p, line.buf);
                    sb_reset(&line);
                } else
                    sb_putc(&line, rbuf[i]);
            }
        }
        if (!stop_written && h->stop && h->stop(h->ud)) {
            char *sp = lt_path_join(dir, "stop");
            lt_err ignore;
            lt_write_file_atomic(sp, "1\n", 2, 0644, &ignore);
            free(sp);
            stop_written = 1;
            stop_t = lt_mono_s();
        }
        /* The ranks get stop_grace seconds to honour DIR/stop (a checkpoint to write) and 60 s to notice
         * DIR/fail; then mpirun is told to end the job (SIGTERM, SIGKILL 30 s later). */
        double now = lt_mono_s();
        if (!term_sent &&
            ((p.failed && now - p.fail_t > 60) || (stop_written && now - stop_t > stop_grace))) {
            kill(pid, SIGTERM);
            term_sent = 1;
            term_t = now;
            if (!p.failed) {
                lt_err e;
                lt_err_set(&e, 500,
                           "distributed run: the ranks did not stop within %.0f s of the stop request "
                           "(LATHE_DIST_STOP_GRACE_S); mpirun was terminated",
                           stop_grace);
                parent_fail(&p, &e);
            }
        }
        if (term_sent == 1 && now - term_t > 30) {
            kill(pid, SIGKILL);
            term_sent = 2;
        }
    }
    if (line.len) parent_line(&p, line.buf);
    sb_free(&line);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
    rc = parent_result(dir, nranks, ws, &p, final, err);
    sb_free(&p.other);
out:
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    posix_spawn_file_actions_destroy(&fa);
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
    free(mlog_p);
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

/* A fresh DIR (work_dir/dist). */
static char *prepare_dir(const char *work_dir, lt_err *err) {
    if (!work_dir) {
        lt_err_set(err, 500, "distributed run: no work directory");
        return NULL;
    }
    char *wd = abs_path(work_dir);
    char *dir = lt_path_join(wd, "dist");
    free(wd);
    lt_rm_rf(dir);
    if (lt_mkdir_p(dir, 0755, err) != 0) {
        free(dir);
        return NULL;
    }
    return dir;
}

static int rank_threads(void) {
    const char *t = getenv("LATHE_RANK_THREADS");
    int n = t && *t ? atoi(t) : 1;
    return n >= 1 ? n : 1;
}

int dist_run(const tr_inputs *in, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err) {
    if (final_metrics) *final_metrics = NULL;
    if (!in->model_dir)
        return lt_err_set(
            err, 500,
            "distributed run: tr_inputs.model_dir is not set (the worker must pass the base model's "
            "directory so that every rank can open it)");
    char *dir = prepare_dir(in->work_dir, err);
    if (!dir) return TR_FAILED;
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)in->seed);
    char *wd = abs_path(in->work_dir), *md = abs_path(in->model_dir), *ia = abs_path(in->init_adapter),
         *rd = abs_path(in->resume_dir);
    json_t *job = json_pack("{s:s, s:O?, s:O?, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:O?, s:s, s:s, s:i}", "mode",
                            "rl", "job", in->job, "eff", in->eff, "model_dir", md, "model_id", in->model_id,
                            "init_adapter", ia, "resume_dir", rd, "capability_prompt",
                            in->capability_prompt ? in->capability_prompt : "", "dataset_name",
                            in->dataset_name ? in->dataset_name : "", "task", in->task, "work_dir", wd,
                            "seed", seed, "threads", rank_threads());
    free(wd);
    free(md);
    free(ia);
    free(rd);
    int rc = TR_FAILED;
    if (!job) {
        lt_err_set(err, 500, "distributed run: cannot encode the job for the ranks");
        goto out;
    }
    add_parent(job);
    char *jp = lt_path_join(dir, "job.json");
    int wrc = write_json(jp, job, err);
    free(jp);
    if (wrc != 0) goto out;
    const struct {
        const char *name;
        const rows_set *s;
    } sets[] = {{"train", in->train}, {"trajectories", in->trajectories}, {"eval", in->eval}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        if (!sets[i].s) continue;
        char *p = dpath(dir, "%s.json", sets[i].name);
        json_t *j = dist_rows_to_json(sets[i].s);
        wrc = write_json(p, j, err);
        json_decref(j);
        free(p);
        if (wrc != 0) goto out;
    }
    rc = launch(dir, h, nranks, final_metrics, err);
out:
    json_decref(job);
    free(dir);
    return rc;
}

int dist_check(const char *work_dir, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err) {
    return dist_check_opts(work_dir, h, nranks, NULL, final_metrics, err);
}

int dist_check_opts(const char *work_dir, const tr_hooks *h, int nranks, const json_t *opts,
                    json_t **final_metrics, lt_err *err) {
    if (final_metrics) *final_metrics = NULL;
    char *dir = prepare_dir(work_dir, err);
    if (!dir) return TR_FAILED;
    char *wd = abs_path(work_dir);
    json_t *job = json_pack("{s:s, s:s, s:b}", "mode", "check", "work_dir", wd, "wait_stop", h->stop != NULL);
    free(wd);
    if (opts) json_object_update(job, (json_t *)opts);
    add_parent(job);
    char *jp = lt_path_join(dir, "job.json");
    int rc = write_json(jp, job, err) == 0 ? launch(dir, h, nranks, final_metrics, err) : TR_FAILED;
    free(jp);
    json_decref(job);
    free(dir);
    return rc;
}
