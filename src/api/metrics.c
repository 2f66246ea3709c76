/* metrics.c: Prometheus text for GET /metrics.
 *
 * The server counts every finished request by (method, route pattern, status) with a latency histogram
 * (fixed buckets from 5 ms to 10 s). Route patterns, not raw paths, are the label, so the number of series
 * stays bounded by the route table (unmatched paths share the label "unmatched"). Other modules add their
 * own lines (jobs by status, worker heartbeats, tokens trained) through collectors registered with
 * api_metrics_add_collector; they run at scrape time on the request thread.
 *
 * The state is process-wide (one server per process) under a mutex; a scrape copies nothing, it formats
 * under the lock, which is short. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/http_internal.h"
#include "util/log.h"
#include "util/util.h"

static const double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NB (sizeof BUCKETS / sizeof BUCKETS[0])

typedef struct series {
    char *method, *route;
    int status;
    uint64_t count;
    double sum;
    uint64_t le[NB]; /* cumulative counts per bucket */
} series;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static series *g_series;
static size_t g_n, g_cap;

#define MAX_COLLECTORS 32
static api_metrics_fn g_collectors[MAX_COLLECTORS];
static int g_ncollectors;

void api_metrics_add_collector(api_metrics_fn fn) {
    pthread_mutex_lock(&g_mu);
    int dup = 0;
    for (int i = 0; i < g_ncollectors; i++)
        dup |= g_collectors[i] == fn;
    if (!dup) {
        if (g_ncollectors < MAX_COLLECTORS)
            g_collectors[g_ncollectors++] = fn;
        else
            lt_log(LOG_ERROR, "metrics: too many collectors, one ignored");
    }
    pthread_mutex_unlock(&g_mu);
}

void api_metrics_observe(const char *method, const char *route, int status, double seconds) {
    pthread_mutex_lock(&g_mu);
    series *s = NULL;
    for (size_t i = 0; i < g_n; i++) {
        if (g_series[i].status == status && !strcmp(g_series[i].route, route) &&
            !strcmp(g_series[i].method, method)) {
            s = &g_series[i];
            break;
        }
    }
    if (!s) {
        if (g_n == g_cap) {
            g_cap = g_cap ? g_cap * 2 : 64;
            series *grown = realloc(g_series, g_cap * sizeof *grown);
            if (!grown) abort();
            g_series = grown;
        }
        s = &g_series[g_n++];
        memset(s, 0, sizeof *s);
        s->method = lt_strdup(method);
        s->route = lt_strdup(route);
        s->status = status;
    }
    s->count++;
    s->sum += seconds;
    for (size_t b = 0; b < NB; b++)
        if (seconds <= BUCKETS[b]) s->le[b]++;
    pthread_mutex_unlock(&g_mu);
}

/* Label values: escape backslash, quote and newline as the text format requires. */
static void label(strbuf *out, const char *v) {
    for (; *v; v++) {
        if (*v == '\\' || *v == '"') sb_putc(out, '\\');
        if (*v == '\n') {
            sb_puts(out, "\\n");
            continue;
        }
        sb_putc(out, *v);
    }
}

static void labels(strbuf *out, const series *s) {
    sb_puts(out, "method=\"");
    label(out, s->method);
    sb_puts(out, "\",route=\"");
    label(out, s->route);
    sb_printf(out, "\",status=\"%d\"", s->status);
}

void api_metrics_render(api_ctx *ctx, strbuf *out) {
    api_metrics_fn collectors[MAX_COLLECTORS];
    int nc;
    pthread_mutex_lock(&g_mu);
    sb_puts(out, "# HELP lathe_http_requests_total HTTP requests by method, route pattern and status.\n"
                 "# TYPE lathe_http_requests_total counter\n");
    for (size_t i = 0; i < g_n; i++) {
        sb_puts(out, "lathe_http_requests_total{");
        labels(out, &g_series[i]);
        sb_printf(out, "} %llu\n", (unsigned long long)g_series[i].count);
    }
    sb_puts(out,
            "# HELP lathe_http_request_duration_seconds HTTP request latency by method, route pattern and "
            "status.\n"
            "# TYPE lathe_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < g_n; i++) {
        const series *s = &g_series[i];
        for (size_t b = 0; b < NB; b++) {
            sb_puts(out, "lathe_http_request_duration_seconds_bucket{");
            labels(out, s);
            sb_printf(out, ",le=\"%g\"} %llu\n", BUCKETS[b], (unsigned long long)s->le[b]);
        }
        sb_puts(out, "lathe_http_request_duration_seconds_bucket{");
        labels(out, s);
        sb_printf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)s->count);
        sb_puts(out, "lathe_http_request_duration_seconds_sum{");
        labels(out, s);
        sb_printf(out, "} %.6f\n", s->sum);
        sb_puts(out, "lathe_http_request_duration_seconds_count{");
        labels(out, s);
        sb_printf(out, "} %llu\n", (unsigned long long)s->count);
    }
    nc = g_ncollectors;
    memcpy(collectors, g_collectors, sizeof collectors);
    pthread_mutex_unlock(&g_mu);
    for (int i = 0; i < nc; i++)
        collectors[i](ctx, out);
}
