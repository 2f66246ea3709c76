/* dist_check.c: the transport self-check (dist_check.h): the parent side launches a job of mode "check";
 * each rank runs dist_selftest, one phase per transport feature (bcast, allreduce, point-to-point with probe,
 * the relayed hooks, the stop protocol), and fails with the first thing that arrived wrong. */
#include "train/dist_check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train/dist.h"
#include "util/err.h"
#include "util/util.h"

#define CHECK_TAG 7

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int check_fail(lt_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check_fail(lt_err *err, const char *fmt, ...) {
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return lt_err_set(err, 500, "rl-rank --check, rank %d: %s", dist_rank(), m);
}

/* 1a. bcast of a float buffer from rank 0 (several chunks when the chunk size is small). */
static int check_bcast(int r, lt_err *err) {
    size_t nf = 10007;
    float *fb = lt_xcalloc(nf, sizeof *fb);
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
    return 0;
}

/* 1b. allreduce: rank k contributes k+1 at element i -> everyone gets (i+1) * n(n+1)/2. */
static int check_allreduce(int r, int n, lt_err *err) {
    size_t na = 3001;
    float *ab = lt_xmalloc(na * sizeof *ab);
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
    return 0;
}

/* 2. sends from every rank > 0 to 0: rank k sends k*3001+5 bytes, byte i = (k*31 + i) % 251. */
static int check_send(int r, lt_err *err) {
    size_t len = (size_t)r * 3001 + 5;
    unsigned char *b = lt_xmalloc(len);
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)(((size_t)r * 31 + i) % 251);
    int rc = dist_send(0, CHECK_TAG, b, len);
    free(b);
    return rc != 0 ? check_fail(err, "dist_send to rank 0 failed") : 0;
}

/* Rank 0's side of 2: one message from each other rank, in any order, probed before it is received. */
static int check_receive(int n, long *received, size_t *bytes, lt_err *err) {
    int *seen = lt_xcalloc((size_t)n, sizeof *seen);
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
        (*received)++;
        *bytes += len;
    }
    free(seen);
    if (dist_probe(CHECK_TAG, NULL) != 0) return check_fail(err, "dist_probe: a message too many");
    return 0;
}

static int check_event(const tr_hooks *h, int step, int total, double x, lt_err *err) {
    json_t *ev = json_pack("{s:s, s:{s:[i], s:[f]}, s:{s:i, s:i}}", "event_type", "step_complete", "metrics",
                           "steps", step, "train/check", x, "data", "step", step, "total_steps", total);
    int rc = h->event(h->ud, ev, err);
    json_decref(ev);
    return rc;
}

/* 3. events and a checkpoint through the hooks (relayed by rank 0 only). */
static int check_hooks(int r, const char *work_dir, const tr_hooks *h, lt_err *err) {
    int steps = 3;
    for (int s = 1; s <= steps; s++)
        if (check_event(h, s, steps, (double)s / 4, err) != 0) return -1;
    if (r != 0 || !work_dir) return 0;
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
    return rc != 0 ? -1 : 0;
}

/* 4. stop: rank 0 polls h->stop and broadcasts its decision, until the parent asks (max 120 s). */
static int check_stop(int r, int ignore_stop, const tr_hooks *h, lt_err *err) {
    if (r == 0) {
        json_t *ev = json_pack("{s:s, s:s, s:{s:b}}", "message", "rl-rank --check: waiting for stop", "level",
                               "info", "data", "waiting_for_stop", 1);
        int rc = h->event(h->ud, ev, err);
        json_decref(ev);
        if (rc != 0) return -1;
    }
    double t0 = lt_mono_s();
    for (;;) {
        int flag = r == 0 ? (!ignore_stop && h->stop(h->ud) ? 1 : lt_mono_s() - t0 > 120 ? 2 : 0) : 0;
        if (dist_bcast(&flag, sizeof flag, 0) != 0) return check_fail(err, "dist_bcast failed");
        if (flag == 2) return check_fail(err, "no stop request within 120 s");
        if (flag) return 0;
        sleep_ms(5);
    }
}

int dist_selftest(const char *dir, const json_t *job, const tr_hooks *h, json_t **final_metrics,
                  lt_err *err) {
    int r = dist_rank(), n = dist_size();
    json_int_t chunk = json_integer_value(json_object_get(job, "chunk"));
    if (chunk > 0) dist_set_chunk((size_t)chunk);
    int crash_rank = json_is_integer(json_object_get(job, "crash_rank"))
                         ? (int)json_integer_value(json_object_get(job, "crash_rank"))
                         : -1;
    const char *work_dir = json_string_value(json_object_get(job, "work_dir"));
    int ignore_stop = json_is_true(json_object_get(job, "ignore_stop"));

    if (check_bcast(r, err) != 0 || check_allreduce(r, n, err) != 0) return TR_FAILED;
    if (r == crash_rank) {
        fprintf(stderr, "rl-rank --check: rank %d crashing on purpose (--crash-rank)\n", r);
        fflush(stderr);
        abort();
    }
    long received = 0;
    size_t bytes = 0;
    if ((r > 0 ? check_send(r, err) : check_receive(n, &received, &bytes, err)) != 0) return TR_FAILED;
    if (check_hooks(r, work_dir, h, err) != 0) return TR_FAILED;
    int stopped = json_is_true(json_object_get(job, "wait_stop"));
    if (stopped && check_stop(r, ignore_stop, h, err) != 0) return TR_FAILED;

    if (final_metrics && r == 0)
        *final_metrics = json_pack("{s:i, s:I, s:I}", "check/ranks", n, "check/messages",
                                   (json_int_t)received, "check/bytes", (json_int_t)bytes);
    return stopped ? TR_STOPPED : TR_DONE;
}

/* ---------------------------------------------------------------- parent side */

int dist_check(const char *work_dir, const tr_hooks *h, int nranks, json_t **final_metrics, lt_err *err) {
    return dist_check_opts(work_dir, h, nranks, NULL, final_metrics, err);
}

int dist_check_opts(const char *work_dir, const tr_hooks *h, int nranks, const json_t *opts,
                    json_t **final_metrics, lt_err *err) {
    if (final_metrics) *final_metrics = NULL;
    char *dir = dist_prepare_dir(work_dir, err);
    if (!dir) return TR_FAILED;
    char *wd = dist_abs_path(work_dir);
    json_t *job = json_pack("{s:s, s:s, s:b}", "mode", "check", "work_dir", wd, "wait_stop", h->stop != NULL);
    free(wd);
    if (opts) json_object_update(job, (json_t *)opts);
    int rc = dist_launch(dir, job, h, nranks, final_metrics, err);
    json_decref(job);
    free(dir);
    return rc;
}
