/* server.c: the HTTP server: libmicrohttpd with a thread pool, the router, the request pipeline, streaming
 * responses, background threads and graceful shutdown (see http.h for the pipeline's order).
 *
 * Connections. lathe owns the listening socket: the gate (gate.c) accepts, checks each connection's first
 * request head (so that malformed or ambiguous requests get the error envelope, not libmicrohttpd's HTML)
 * and hands the connection to libmicrohttpd with MHD_add_connection. Every request, first or kept-alive,
 * also goes through strict_head below (duplicate Content-Length, Host, query bytes).
 *
 * Threads. libmicrohttpd runs MHD_OPTION_THREAD_POOL_SIZE polling threads (epoll where available); each
 * owns a share of the connections and calls our access handler for them. Handlers run on those threads,
 * so they must not block for long: database work is fine, training is not. Streaming responses started
 * with api_stream_start get a producer thread each: it writes into a buffer, and the connection is suspended
 * while the buffer is empty (resumed by the next write), so a quiet stream costs no polling thread at all.
 * Polled streams (api_stream_start_polled, the job events) have no producer thread: one stream-poller thread
 * ticks every one of them in turn. Open streams are capped (cfg max_streams in all, max_streams_per_key per
 * API key; more get a 429 naming the limit), and a slot frees once the client has gone and the producer (or
 * the poller) is done with it.
 *
 * A request's life. libmicrohttpd calls the access handler several times per request: first with the
 * headers (we allocate the request state, pick the request id, match the route, and check what headers
 * alone decide: 404, 405, 413 when Content-Length is over the route's limit, 426 client version, 401 auth,
 * 429 rate limit, so that nobody unauthenticated gets a body spooled), then once per chunk of body (appended
 * to memory, or spooled to a temp file for raw-body routes), then once more with no data: the body is
 * complete and the rest runs (JSON checks 400, idempotency, the handler). The request state is freed in the
 * "request completed" callback, which also counts in-flight requests down for shutdown.
 *
 * An early answer to a request that carries a body makes libmicrohttpd close the connection without
 * reading the body; a client still writing it then sees a reset instead of our answer. So small bodies
 * (up to 64 MiB) are read and discarded and answered at the end; only huge ones, or clients that sent
 * `Expect: 100-continue` and wait for our word, are answered early.
 *
 * Shutdown (api_server_stop, on SIGTERM/SIGINT in `lathe serve`): raise the stopping flag (background
 * loops and stream producers see it and return), quiesce the daemon (stop accepting), end the streams,
 * wait for in-flight requests to finish, stop the daemon, join background threads, run shutdown hooks,
 * close the store. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <malloc.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/http_internal.h"
#include "util/log.h"
#include "util/util.h"

#define MAX_ROUTES 256
#define MAX_SEGS 16
#define DRAIN_LIMIT                                                                                          \
    ((uint64_t)64 << 20) /* read-and-discard bodies up to this size before an early answer                   \
                          */
#define STREAM_HIGH_WATER ((size_t)1 << 20)
#define MHD_MEMORY_LIMIT ((size_t)64 << 10) /* per connection; above the gate's head limits */
#define BIG_REQUEST ((uint64_t)256 << 10)   /* bodies from this size on are followed by malloc_trim */
#define SHUTDOWN_WAIT_S 30.0

/* ---- the router ---- */

typedef struct route {
    char *method;
    char *pattern;
    int nseg;
    char *seg[MAX_SEGS]; /* literal text, or the parameter name for parameters */
    int is_param[MAX_SEGS];
    int literals; /* number of literal segments: more specific routes win */
    api_handler h;
    unsigned flags;
    size_t max_body;
} route;

struct api_router {
    route routes[MAX_ROUTES];
    int n;
    api_ctx *ctx;
};

/* ---- context internals ---- */

typedef struct spawned {
    pthread_t tid;
    char name[48];
    void (*fn)(api_ctx *, void *);
    void *arg;
    api_ctx *ctx;
    struct spawned *next;
} spawned;

typedef struct hook {
    void (*fn)(api_ctx *, void *);
    void *arg;
    struct hook *next;
} hook;

struct api_ctx_private {
    atomic_int stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC; broadcast at shutdown */
    spawned *threads;
    hook *hooks;
};

typedef struct api_stream_impl api_stream_impl;

struct api_server {
    api_config cfg;
    api_ctx ctx;
    struct api_ctx_private priv;
    api_router *router;
    api_ratelimit *rl;
    struct MHD_Daemon *mhd;
    int listen_fd; /* ours, not libmicrohttpd's: the gate accepts (gate.c) */
    api_gate *gate;
    char host[128];
    int port;
    char *db_url, *models_dir, *tmp_dir;
    atomic_int inflight;
    pthread_mutex_t streams_mu;
    pthread_cond_t streams_cv;
    struct api_stream *streams; /* live streams */
    int producers;              /* running producer threads */
};

/* ---- streams ---- */

struct api_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled on new space, close, done */
    strbuf buf;
    size_t off;
    int closed, done, suspended, refs;
    struct MHD_Connection *conn;
    api_stream_fn fn;
    api_stream_tick_fn tick; /* polled streams: no producer thread */
    int period_ms;
    double due;    /* monotonic time of the next tick */
    int poll_done; /* the poller has finished with it (guarded by streams_mu) */
    int armed;     /* its response is queued: the poller may tick it (guarded by streams_mu) */
    void *arg;
    void (*free_arg)(void *);
    api_server *srv;
    char request_id[API_REQUEST_ID_MAX];
    char key_id[LT_UUID_LEN]; /* the API key that opened it ("" on public routes), for the per-key cap */
    struct api_stream *next, *prev;
};

/* ---- request state ---- */

typedef struct req_state {
    api_req req;
    api_resp resp;
    struct api_req_private priv;
    api_server *srv;
    route *route;
    int early_status; /* 404, 405, 413 decided from the headers */
    char allow[64];
    strbuf body;
    int spool_fd;
    char *spool_path;
    uint64_t received;
    uint64_t max_body;
    int too_large, spool_failed, responded;
    double t0;
    char *path;
    char method[16];
} req_state;

/* ================================================================================================== */
/* context                                                                                            */

int api_ctx_stopping(const api_ctx *ctx) {
    return atomic_load(&ctx->priv->stopping);
}

static void abs_deadline(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init_mono(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

int api_ctx_sleep(api_ctx *ctx, int ms) {
    struct api_ctx_private *p = ctx->priv;
    struct timespec ts;
    abs_deadline(&ts, ms < 0 ? 0 : ms);
    pthread_mutex_lock(&p->mu);
    while (!atomic_load(&p->stopping))
        if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&p->mu);
    return atomic_load(&p->stopping) ? 1 : 0;
}

static void *spawn_main(void *arg) {
    spawned *s = arg;
    lt_log_set_context(s->name);
    s->fn(s->ctx, s->arg);
    lt_log_set_context(NULL);
    return NULL;
}

int api_ctx_spawn(api_ctx *ctx, const char *name, void (*fn)(api_ctx *ctx, void *arg), void *arg,
                  lt_err *err) {
    spawned *s = calloc(1, sizeof *s);
    if (!s) return lt_err_set(err, 500, "out of memory starting thread %s", name);
    snprintf(s->name, sizeof s->name, "%s", name ? name : "background");
    s->fn = fn;
    s->arg = arg;
    s->ctx = ctx;
    if (pthread_create(&s->tid, NULL, spawn_main, s) != 0) {
        free(s);
        return lt_err_set(err, 500, "cannot start thread %s: %s", name, strerror(errno));
    }
    pthread_mutex_lock(&ctx->priv->mu);
    s->next = ctx->priv->threads;
    ctx->priv->threads = s;
    pthread_mutex_unlock(&ctx->priv->mu);
    return 0;
}

void api_ctx_on_shutdown(api_ctx *ctx, void (*fn)(api_ctx *ctx, void *arg), void *arg) {
    hook *h = calloc(1, sizeof *h);
    if (!h) abort();
    h->fn = fn;
    h->arg = arg;
    pthread_mutex_lock(&ctx->priv->mu);
    h->next = ctx->priv->hooks; /* newest first = reverse order of registration */
    ctx->priv->hooks = h;
    pthread_mutex_unlock(&ctx->priv->mu);
}

/* ================================================================================================== */
/* router                                                                                             */

static int split_path(char *p, char **segs, int max) {
    int n = 0;
    char *save = NULL;
    for (char *s = strtok_r(p, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
        if (n == max) return -1;
        segs[n++] = s;
    }
    return n;
}

int api_route(api_router *r, const char *method, const char *pattern, api_handler h, unsigned flags,
              size_t max_body) {
    if (!method || !pattern || pattern[0] != '/' || !h) {
        lt_log(LOG_ERROR, "route: bad registration %s %s", method ? method : "?", pattern ? pattern : "?");
        return -1;
    }
    route tmp;
    memset(&tmp, 0, sizeof tmp);
    char *copy = lt_strdup(pattern);
    char *segs[MAX_SEGS];
    int n = split_path(copy, segs, MAX_SEGS);
    if (n < 0) {
        free(copy);
        lt_log(LOG_ERROR, "route: pattern %s has too many segments", pattern);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        size_t len = strlen(segs[i]);
        if (segs[i][0] == '{') {
            if (len < 3 || segs[i][len - 1] != '}') {
                free(copy);
                lt_log(LOG_ERROR, "route: bad parameter segment in %s", pattern);
                return -1;
            }
            tmp.seg[i] = lt_strndup(segs[i] + 1, len - 2);
            tmp.is_param[i] = 1;
        } else {
            tmp.seg[i] = lt_strdup(segs[i]);
            tmp.literals++;
        }
    }
    free(copy);
    tmp.nseg = n;
    tmp.method = lt_strdup(method);
    tmp.pattern = lt_strdup(pattern);
    tmp.h = h;
    tmp.flags = flags;
    tmp.max_body = max_body ? max_body : (flags & API_RAW_BODY) ? API_UPLOAD_MAX_BODY : 0;
    for (int i = 0; i < r->n; i++) {
        if (!strcmp(r->routes[i].method, method) && !strcmp(r->routes[i].pattern, pattern)) {
            route *old = &r->routes[i];
            for (int k = 0; k < old->nseg; k++)
                free(old->seg[k]);
            free(old->method);
            free(old->pattern);
            *old = tmp;
            return 0;
        }
    }
    if (r->n == MAX_ROUTES) {
        for (int k = 0; k < tmp.nseg; k++)
            free(tmp.seg[k]);
        free(tmp.method);
        free(tmp.pattern);
        lt_log(LOG_ERROR, "route table full; %s %s not registered", method, pattern);
        return -1;
    }
    r->routes[r->n++] = tmp;
    return 0;
}

api_ctx *api_router_ctx(api_router *r) {
    return r->ctx;
}

static void router_free(api_router *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        for (int k = 0; k < r->routes[i].nseg; k++)
            free(r->routes[i].seg[k]);
        free(r->routes[i].method);
        free(r->routes[i].pattern);
    }
    free(r);
}

/* Finds the route for method + path. Returns it (and fills the request's params), or NULL with *status
 * 404 (no pattern matches the path) or 405 (patterns match, none with this method; allow lists them). */
static route *router_match(api_router *r, const char *method, const char *path, api_req *req, int *status,
                           char *allow, size_t allow_cap) {
    char *copy = lt_strdup(path);
    char *segs[MAX_SEGS + 1];
    int n = split_path(copy, segs, MAX_SEGS + 1);
    route *best = NULL;
    int path_matched = 0;
    allow[0] = '\0';
    const char *m = !strcmp(method, "HEAD") ? "GET" : method;
    for (int i = 0; n >= 0 && i < r->n; i++) {
        route *rt = &r->routes[i];
        if (rt->nseg != n) continue;
        int ok = 1;
        for (int k = 0; k < n && ok; k++)
            if (!rt->is_param[k] && strcmp(rt->seg[k], segs[k]) != 0) ok = 0;
        if (!ok) continue;
        if (strcmp(rt->method, m) != 0) {
            if (!strstr(allow, rt->method) && strlen(allow) + strlen(rt->method) + 3 < allow_cap) {
                if (allow[0]) strcat(allow, ", ");
                strcat(allow, rt->method);
            }
            path_matched = 1;
            continue;
        }
        if (!best || rt->literals > best->literals) best = rt;
    }
    if (best) {
        req->nparams = 0;
        for (int k = 0; k < n; k++) {
            if (!best->is_param[k] || req->nparams == API_MAX_PARAMS) continue;
            req->param_names[req->nparams] = best->seg[k];
            req->param_values[req->nparams] = lt_strdup(segs[k]);
            req->nparams++;
        }
        *status = 0;
    } else {
        *status = path_matched ? 405 : 404;
    }
    free(copy);
    return best;
}

/* ================================================================================================== */
/* request accessors                                                                                  */

const char *api_param(const api_req *req, const char *name) {
    for (int i = 0; i < req->nparams; i++)
        if (!strcmp(req->param_names[i], name)) return req->param_values[i];
    return NULL;
}

const char *api_query(const api_req *req, const char *name) {
    if (!req->priv || !req->priv->conn) return NULL;
    return MHD_lookup_connection_value(req->priv->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *api_header(const api_req *req, const char *name) {
    if (!req->priv || !req->priv->conn) return NULL;
    return MHD_lookup_connection_value(req->priv->conn, MHD_HEADER_KIND, name);
}

int api_query_int(const api_req *req, api_resp *resp, const char *name, int64_t dflt, int64_t min,
                  int64_t max, int64_t *out) {
    const char *v = api_query(req, name);
    *out = dflt;
    if (!v || !*v) return 0;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    json_t *errors = json_array();
    if (errno || !end || *end) {
        api_verr_add(errors, api_loc("query", name, NULL), "type_error", "must be an integer");
    } else if (x < min) {
        api_verr_add(errors, api_loc("query", name, NULL), "greater_than_equal", "must be >= %lld",
                     (long long)min);
    } else if (x > max) {
        api_verr_add(errors, api_loc("query", name, NULL), "less_than_equal", "must be <= %lld",
                     (long long)max);
    } else {
        json_decref(errors);
        *out = x;
        return 0;
    }
    api_validation_error(resp, errors);
    return -1;
}

/* ================================================================================================== */
/* streams                                                                                            */

int api_stream_start(api_resp *resp, int status, const char *content_type, api_stream_fn fn, void *arg,
                     void (*free_arg)(void *)) {
    api_resp_clear(resp, 1);
    resp->status = status;
    resp->kind = RESP_STREAM;
    resp->content_type = lt_strdup(content_type ? content_type : "text/event-stream");
    resp->stream_fn = fn;
    resp->stream_arg = arg;
    resp->stream_free = free_arg;
    return 0;
}

int api_stream_start_polled(api_resp *resp, int status, const char *content_type, api_stream_tick_fn tick,
                            int period_ms, void *arg, void (*free_arg)(void *)) {
    api_stream_start(resp, status, content_type, NULL, arg, free_arg);
    resp->stream_tick = tick;
    resp->stream_period_ms = period_ms > 0 ? period_ms : 250;
    return 0;
}

static void stream_release(api_stream *s) {
    api_server *srv = s->srv;
    pthread_mutex_lock(&srv->streams_mu);
    pthread_mutex_lock(&s->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left == 0) {
        if (s->prev)
            s->prev->next = s->next;
        else
            srv->streams = s->next;
        if (s->next) s->next->prev = s->prev;
    }
    pthread_cond_broadcast(&srv->streams_cv);
    pthread_mutex_unlock(&srv->streams_mu);
    if (left == 0) {
        sb_free(&s->buf);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
    }
}

/* Wakes the connection if it sleeps (caller holds s->mu). */
static void stream_kick(api_stream *s) {
    if (s->suspended && s->conn) {
        s->suspended = 0;
        MHD_resume_connection(s->conn);
    }
}

int api_stream_write(api_stream *s, const void *data, size_t n) {
    pthread_mutex_lock(&s->mu);
    while (!s->tick && !s->closed && s->buf.len - s->off > STREAM_HIGH_WATER) {
        struct timespec ts;
        abs_deadline(&ts, 1000);
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        if (api_ctx_stopping(&s->srv->ctx)) s->closed = 1;
    }
    if (s->closed || api_ctx_stopping(&s->srv->ctx)) {
        s->closed = 1;
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    sb_append(&s->buf, data, n);
    stream_kick(s);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int api_stream_printf(api_stream *s, const char *fmt, ...) {
    strbuf sb = STRBUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    char tmp[1024];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) {
        sb_append(&sb, tmp, (size_t)n);
    } else {
        sb_reserve(&sb, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(sb.buf, (size_t)n + 1, fmt, ap);
        va_end(ap);
        sb.len = (size_t)n;
    }
    int rc = api_stream_write(s, sb.buf, sb.len);
    sb_free(&sb);
    return rc;
}

int api_stream_event(api_stream *s, const char *event, json_t *json) {
    char *text =
        json ? json_dumps(json, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))
             : lt_strdup("{}");
    json_decref(json);
    if (!text) return -1;
    strbuf sb = STRBUF_INIT;
    sb_printf(&sb, "event: %s\ndata: ", event);
    sb_puts(&sb, text); /* compact JSON with ASCII escapes: never contains a newline */
    sb_puts(&sb, "\n\n");
    free(text);
    int rc = api_stream_write(s, sb.buf, sb.len);
    sb_free(&sb);
    return rc;
}

int api_stream_wait(api_stream *s, int ms) {
    struct timespec ts;
    abs_deadline(&ts, ms < 0 ? 0 : ms);
    pthread_mutex_lock(&s->mu);
    while (!s->closed && !api_ctx_stopping(&s->srv->ctx))
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    if (api_ctx_stopping(&s->srv->ctx)) s->closed = 1;
    int closed = s->closed;
    pthread_mutex_unlock(&s->mu);
    return closed ? -1 : 0;
}

int api_stream_closed(api_stream *s) {
    pthread_mutex_lock(&s->mu);
    int c = s->closed || api_ctx_stopping(&s->srv->ctx);
    pthread_mutex_unlock(&s->mu);
    return c;
}

api_ctx *api_stream_ctx(api_stream *s) {
    return &s->srv->ctx;
}

const char *api_stream_request_id(api_stream *s) {
    return s->request_id;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    api_stream *s = cls;
    pthread_mutex_lock(&s->mu);
    size_t avail = s->buf.len - s->off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(out, s->buf.buf + s->off, n);
        s->off += n;
        if (s->off == s->buf.len) {
            sb_reset(&s->buf);
            s->off = 0;
        }
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return (ssize_t)n;
    }
    if (s->done || s->closed) {
        pthread_mutex_unlock(&s->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send yet: park the connection until the producer writes (stream_kick). */
    s->suspended = 1;
    MHD_suspend_connection(s->conn);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void stream_response_free(void *cls) {
    api_stream *s = cls;
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    s->conn = NULL;
    s->suspended = 0;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    stream_release(s);
}

static void *stream_producer(void *arg) {
    api_stream *s = arg;
    lt_log_set_context(s->request_id);
    s->fn(s, s->arg);
    if (s->free_arg) s->free_arg(s->arg);
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    stream_kick(s);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    api_server *srv = s->srv;
    stream_release(s);
    pthread_mutex_lock(&srv->streams_mu);
    srv->producers--;
    pthread_cond_broadcast(&srv->streams_cv);
    pthread_mutex_unlock(&srv->streams_mu);
    lt_log_set_context(NULL);
    return NULL;
}

/* ---- the stream poller: one thread ticks every polled stream ---- */

#define POLL_BATCH 64
#define POLL_MS 50

/* The poller's last act for a stream: free its arg, end the response, drop the poller's reference. */
static void poll_finish(api_server *srv, api_stream *s) {
    if (s->free_arg) s->free_arg(s->arg);
    s->free_arg = NULL;
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    stream_kick(s);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&srv->streams_mu);
    srv->producers--;
    pthread_cond_broadcast(&srv->streams_cv);
    pthread_mutex_unlock(&srv->streams_mu);
    stream_release(s);
}

/* One pass: ticks the polled streams that are due (all of them, to end them, when final). Returns whether a
 * stream asked to be ticked again soon. */
static int poll_once(api_server *srv, int final) {
    api_stream *batch[POLL_BATCH];
    int soon = 0, more = 1;
    double now = lt_mono_s();
    while (more) {
        int n = 0;
        more = 0;
        pthread_mutex_lock(&srv->streams_mu);
        for (api_stream *s = srv->streams; s; s = s->next) {
            if (!s->tick || !s->armed || s->poll_done || (!final && s->due > now)) continue;
            if (n == POLL_BATCH) {
                more = 1;
                break;
            }
            s->poll_done = 1; /* taken for this pass; set back below when it goes on */
            pthread_mutex_lock(&s->mu);
            s->refs++;
            pthread_mutex_unlock(&s->mu);
            batch[n++] = s;
        }
        pthread_mutex_unlock(&srv->streams_mu);
        for (int i = 0; i < n; i++) {
            api_stream *s = batch[i];
            pthread_mutex_lock(&s->mu);
            int closed = s->closed, full = s->buf.len - s->off > STREAM_HIGH_WATER;
            pthread_mutex_unlock(&s->mu);
            int r = API_TICK_AGAIN;
            if (final || closed)
                r = API_TICK_DONE;
            else if (!full)
                r = s->tick(s, s->arg);
            if (r != API_TICK_DONE && api_stream_closed(s)) r = API_TICK_DONE;
            if (r == API_TICK_DONE) {
                poll_finish(srv, s);
            } else {
                pthread_mutex_lock(&srv->streams_mu);
                s->poll_done = 0;
                s->due = full                 ? now + POLL_MS / 1000.0
                         : r == API_TICK_SOON ? now
                                              : now + s->period_ms / 1000.0;
                pthread_mutex_unlock(&srv->streams_mu);
                soon |= r == API_TICK_SOON;
            }
            stream_release(s); /* the pass's reference */
        }
    }
    return soon;
}

static void poller_main(api_ctx *ctx, void *arg) {
    api_server *srv = arg;
    while (!api_ctx_sleep(ctx, POLL_MS)) {
        int rounds = 0; /* streams with more to send go round again at once, a few times */
        while (poll_once(srv, 0) && !api_ctx_stopping(ctx) && ++rounds < 16)
            ;
    }
    poll_once(srv, 1); /* stopping: end every polled stream */
}

/* ================================================================================================== */
/* the pipeline                                                                                       */

static int request_id_ok(const char *s) {
    if (!s || !*s || strlen(s) >= API_REQUEST_ID_MAX) return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_' || c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static void add_header(struct MHD_Response *mr, const char *name, const char *value) {
    if (MHD_add_response_header(mr, name, value) != MHD_YES) lt_log(LOG_WARN, "cannot add header %s", name);
}

static api_stream *stream_open(req_state *rs, struct MHD_Connection *conn);

/* Sends rs->resp: converts it to a libmicrohttpd response, adds the headers, queues it, counts it. */
static enum MHD_Result respond(req_state *rs, struct MHD_Connection *conn) {
    api_server *srv = rs->srv;
    api_resp *r = &rs->resp;
    if (r->status == 0 || r->kind == RESP_NONE)
        api_error(r, 500, "internal_error", "internal error (request %s)", rs->req.request_id);
    struct MHD_Response *mr = NULL;
    api_stream *stream = NULL;
    if (r->kind == RESP_STREAM) stream = stream_open(rs, conn);
    switch (r->kind) {
    case RESP_FILE:
        mr = MHD_create_response_from_fd64(r->fd_size, r->fd);
        if (mr) r->fd = -1; /* libmicrohttpd closes it */
        break;
    case RESP_STREAM:
        mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, stream,
                                               stream_response_free);
        if (!mr) { /* nobody else uses the stream yet (a polled one is not armed): drop it */
            int counted = !(stream->tick && stream->poll_done);
            if (stream->free_arg) stream->free_arg(stream->arg);
            stream->free_arg = NULL;
            stream->refs = 1;
            stream_release(stream);
            stream = NULL;
            pthread_mutex_lock(&srv->streams_mu);
            if (counted) srv->producers--;
            pthread_mutex_unlock(&srv->streams_mu);
        }
        break;
    default:
        if (r->body && r->body_len) {
            mr = MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
            if (mr) r->body = NULL;
        } else {
            mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        }
        break;
    }
    if (!mr) {
        lt_log(LOG_ERROR, "cannot create a response");
        return MHD_NO;
    }
    if (r->content_type && r->status != 204) add_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    add_header(mr, "X-Request-Id", rs->req.request_id);
    for (int i = 0; i < r->nheaders; i++)
        add_header(mr, r->hname[i], r->hval[i]);
    if (stream) {
        add_header(mr, "Cache-Control", "no-cache");
        add_header(mr, "X-Accel-Buffering", "no");
    }
    int has_close = 0;
    for (int i = 0; i < r->nheaders; i++)
        has_close |= !strcasecmp(r->hname[i], MHD_HTTP_HEADER_CONNECTION);
    if (!has_close && (api_ctx_stopping(&srv->ctx) || srv->cfg.no_keep_alive))
        add_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");
    int status = r->status;
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, mr);
    MHD_destroy_response(mr);
    rs->responded = 1;
    double dt = lt_mono_s() - rs->t0;
    api_metrics_observe(rs->method, rs->route ? rs->route->pattern : "unmatched", status, dt);
    lt_log(status >= 500 ? LOG_ERROR : LOG_INFO, "%s %s %d %.1fms%s", rs->method, rs->path, status, dt * 1000,
           stream ? " (stream)" : "");
    if (stream && stream->tick) {
        pthread_mutex_lock(&srv->streams_mu);
        stream->armed = 1; /* the poller ticks it from now on */
        pthread_mutex_unlock(&srv->streams_mu);
    } else if (stream) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, stream_producer, stream) != 0) {
            lt_log(LOG_ERROR, "cannot start a stream producer: %s", strerror(errno));
            if (stream->free_arg) stream->free_arg(stream->arg);
            pthread_mutex_lock(&stream->mu);
            stream->done = 1;
            stream_kick(stream);
            pthread_mutex_unlock(&stream->mu);
            pthread_mutex_lock(&srv->streams_mu);
            srv->producers--;
            pthread_mutex_unlock(&srv->streams_mu);
            stream_release(stream);
        }
        pthread_attr_destroy(&a);
    }
    return ret;
}

/* Admits a stream under the caps and registers it (in the live list, counted as a running producer, with
 * the two references of the libmicrohttpd response and the producer thread); the caller starts the
 * producer. Past a cap the response becomes the 429 instead and NULL is returned. */
static api_stream *stream_open(req_state *rs, struct MHD_Connection *conn) {
    api_server *srv = rs->srv;
    api_resp *r = &rs->resp;
    const char *key = rs->req.principal.authenticated ? rs->req.principal.key.id : "";
    int max_all = srv->cfg.max_streams > 0 ? srv->cfg.max_streams : API_DEFAULT_MAX_STREAMS;
    int max_key =
        srv->cfg.max_streams_per_key > 0 ? srv->cfg.max_streams_per_key : API_DEFAULT_MAX_STREAMS_PER_KEY;
    pthread_mutex_lock(&srv->streams_mu);
    int all = 0, mine = 0;
    for (api_stream *s = srv->streams; s; s = s->next) {
        all++;
        if (key[0] && !strcmp(s->key_id, key)) mine++;
    }
    if (all >= max_all || (key[0] && mine >= max_key)) {
        pthread_mutex_unlock(&srv->streams_mu);
        if (r->stream_free) r->stream_free(r->stream_arg);
        r->stream_free = NULL;
        r->stream_arg = NULL;
        api_resp_clear(r, 0);
        if (all >= max_all)
            api_error(r, 429, "rate_limited",
                      "too many open event streams on this server (limit %d, --max-streams / "
                      "LATHE_MAX_STREAMS); close one and retry",
                      max_all);
        else
            api_error(r, 429, "rate_limited",
                      "this API key has %d event streams open (limit %d per key, --max-streams-per-key / "
                      "LATHE_MAX_STREAMS_PER_KEY); close one and retry",
                      mine, max_key);
        api_header_add(r, "Retry-After", "5");
        lt_log(LOG_WARN, "event stream refused: %d open in all, %d for this key", all, mine);
        return NULL;
    }
    api_stream *stream = calloc(1, sizeof *stream);
    if (!stream) abort();
    pthread_mutex_init(&stream->mu, NULL);
    cond_init_mono(&stream->cv);
    stream->refs = 2;
    stream->conn = conn;
    stream->fn = r->stream_fn;
    stream->tick = r->stream_tick;
    stream->period_ms = r->stream_period_ms;
    stream->due = 0; /* at once */
    stream->arg = r->stream_arg;
    stream->free_arg = r->stream_free;
    stream->srv = srv;
    snprintf(stream->request_id, sizeof stream->request_id, "%s", rs->req.request_id);
    snprintf(stream->key_id, sizeof stream->key_id, "%s", key);
    r->stream_fn = NULL;
    r->stream_tick = NULL;
    r->stream_arg = NULL;
    r->stream_free = NULL;
    if (stream->tick && api_ctx_stopping(&srv->ctx)) { /* the poller has gone: an empty stream */
        if (stream->free_arg) stream->free_arg(stream->arg);
        stream->free_arg = NULL;
        stream->done = 1;
        stream->poll_done = 1;
        stream->refs = 1;
        stream->next = srv->streams;
        if (srv->streams) srv->streams->prev = stream;
        srv->streams = stream;
        pthread_mutex_unlock(&srv->streams_mu);
        return stream;
    }
    stream->next = srv->streams;
    if (srv->streams) srv->streams->prev = stream;
    srv->streams = stream;
    srv->producers++;
    pthread_mutex_unlock(&srv->streams_mu);
    return stream;
}

static void set_error_for_status(req_state *rs, int status) {
    api_resp *r = &rs->resp;
    if (status == 404) {
        api_error(r, 404, "not_found", "no route for %s %s", rs->method, rs->path);
    } else if (status == 405) {
        api_error(r, 405, "method_not_allowed", "method %s is not allowed on %s; allowed: %s", rs->method,
                  rs->path, rs->allow);
        api_header_add(r, "Allow", rs->allow);
    } else if (status == 413) {
        api_error(r, 413, "payload_too_large",
                  "request body is larger than the limit of %llu bytes for this route",
                  (unsigned long long)rs->max_body);
    }
}

/* ---- strict request checks (headers and query, before routing decides anything) ---- */

typedef struct head_scan {
    int content_length, transfer_encoding, host;
    char bad_query[64]; /* name of the first query parameter with a NUL or control byte */
} head_scan;

static int bytes_clean(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
    }
    return lt_utf8_valid(s, n);
}

static enum MHD_Result head_scan_kv(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                    const char *value, size_t value_size) {
    head_scan *h = cls;
    if (kind == MHD_HEADER_KIND) {
        if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) h->content_length++;
        if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) h->transfer_encoding++;
        if (!strcasecmp(key, MHD_HTTP_HEADER_HOST)) h->host++;
    } else if (kind == MHD_GET_ARGUMENT_KIND && !h->bad_query[0]) {
        if (!bytes_clean(key, key_size))
            snprintf(h->bad_query, sizeof h->bad_query, "(a parameter name)");
        else if (value && !bytes_clean(value, value_size))
            snprintf(h->bad_query, sizeof h->bad_query, "%.48s", key);
    }
    return MHD_YES;
}

/* What the headers alone make unacceptable whatever the route: a request that two parties could frame
 * differently (two Content-Length headers, Content-Length with Transfer-Encoding: request smuggling behind a
 * proxy), HTTP/1.1 without exactly one Host, and query parameters with NUL or control bytes or invalid
 * UTF-8 (they would be cut short or reach the store). 0, or -1 with a 400 in rs->resp (the connection is
 * closed after it: its framing cannot be trusted). */
static int strict_head(req_state *rs, struct MHD_Connection *conn, const char *version) {
    head_scan h;
    memset(&h, 0, sizeof h);
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND, head_scan_kv, &h);
    const char *why = NULL;
    char buf[256];
    if (h.content_length > 1)
        why = "the request has more than one Content-Length header; send exactly one";
    else if (h.content_length && h.transfer_encoding)
        why = "the request has both Content-Length and Transfer-Encoding; send only one of them";
    else if (h.transfer_encoding > 1)
        why = "the request has more than one Transfer-Encoding header; send exactly one";
    else if (version && !strcmp(version, MHD_HTTP_VERSION_1_1) && h.host != 1)
        why = h.host ? "the request has more than one Host header; send exactly one"
                     : "an HTTP/1.1 request needs a Host header";
    else if (h.bad_query[0]) {
        snprintf(buf, sizeof buf,
                 "query parameter '%s' contains a NUL or control character or invalid UTF-8; "
                 "percent-encode only printable UTF-8",
                 h.bad_query);
        why = buf;
    }
    if (!why) return 0;
    api_error(&rs->resp, 400, "bad_request", "%s", why);
    api_header_add(&rs->resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return -1;
}

/* The charset parameter of a Content-Type ("" when there is none). */
static void content_type_charset(const char *ct, char *out, size_t cap) {
    out[0] = '\0';
    for (const char *p = ct ? strchr(ct, ';') : NULL; p; p = strchr(p + 1, ';')) {
        const char *q = p + 1;
        while (*q == ' ' || *q == '\t')
            q++;
        if (strncasecmp(q, "charset=", 8) != 0) continue;
        q += 8;
        if (*q == '"') q++;
        size_t n = strcspn(q, "\"; \t");
        snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), q);
        return;
    }
}

static int content_type_is_json(const char *ct) {
    if (!ct) return 0;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0) return 0;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

/* The checks that need only the headers: client version (426), authentication (401), rate limit (429).
 * They run when the headers arrive, before any body is read or spooled. 0, or -1 with the answer in rs->resp.
 */
static int admit(req_state *rs) {
    api_server *srv = rs->srv;
    api_req *req = &rs->req;
    api_resp *resp = &rs->resp;
    route *rt = rs->route;
    /* 426: named clients older than the configured minimum (API routes only; probes stay open). */
    if (srv->cfg.min_client_version && *srv->cfg.min_client_version && !strncmp(rs->path, "/api/", 5)) {
        char need[32] = "";
        lt_err err = {0};
        int old = api_client_too_old(srv->cfg.min_client_version, api_header(req, "User-Agent"), need, &err);
        if (old == 1) {
            api_error(resp, 426, "upgrade_required",
                      "this client is older than the minimum version %s; upgrade it", need);
            return -1;
        }
    }
    if (!(rt->flags & API_PUBLIC)) {
        if (api_authenticate(req, resp) != 0) return -1;
        int retry = 1;
        if (!api_ratelimit_take(srv->rl, req->principal.key.id, lt_mono_s(), &retry)) {
            char ra[16];
            snprintf(ra, sizeof ra, "%d", retry);
            api_error(resp, 429, "rate_limited", "rate limit exceeded for this API key; retry in %d s",
                      retry);
            api_header_add(resp, "Retry-After", ra);
            return -1;
        }
    }
    return 0;
}

/* Runs everything after the body has arrived; leaves the answer in rs->resp. */
static void pipeline(req_state *rs) {
    api_req *req = &rs->req;
    api_resp *resp = &rs->resp;
    route *rt = rs->route;
    if (rs->early_status) {
        if (rs->early_status > 0) set_error_for_status(rs, rs->early_status); /* -1: admit() answered */
        return;
    }
    if (rs->too_large) {
        set_error_for_status(rs, 413);
        return;
    }
    req->content_type = api_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (rt->flags & API_RAW_BODY) {
        if (rs->spool_failed) {
            api_error(resp, 500, "internal_error", "internal error (request %s)", req->request_id);
            return;
        }
        if (rs->spool_fd >= 0) {
            if (fsync(rs->spool_fd) != 0)
                lt_log(LOG_WARN, "fsync of upload spool failed: %s", strerror(errno));
            close(rs->spool_fd);
            rs->spool_fd = -1;
        }
        req->body_path = rs->spool_path;
        req->body_len = rs->received;
    } else if (rs->body.len > 0) {
        if (!content_type_is_json(req->content_type)) {
            api_error(resp, 400, "bad_request",
                      "the body must be JSON with Content-Type: application/json (got %.80s)",
                      req->content_type ? req->content_type : "no Content-Type");
            return;
        }
        char charset[32];
        content_type_charset(req->content_type, charset, sizeof charset);
        if (charset[0] && strcasecmp(charset, "utf-8") != 0 && strcasecmp(charset, "utf8") != 0) {
            api_error(resp, 400, "bad_request",
                      "the body must be UTF-8 JSON: Content-Type charset '%s' is not supported (send "
                      "charset=utf-8 or no charset)",
                      charset);
            return;
        }
        if (!lt_utf8_valid(rs->body.buf, rs->body.len)) {
            api_error(resp, 400, "bad_request", "the body is not valid UTF-8");
            return;
        }
        json_error_t jerr;
        req->json = json_loadb(rs->body.buf, rs->body.len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!req->json) {
            api_error(resp, 400, "bad_request", "the body is not valid JSON: %s at line %d column %d",
                      jerr.text, jerr.line, jerr.column);
            return;
        }
        req->body = rs->body.buf;
        req->body_len = rs->body.len;
    } else {
        req->body = "";
        req->body_len = 0;
    }
    /* Idempotency-Key: noted now, claimed by the handler's api_authorize once authorization passed. */
    if (api_idem_prepare(req, resp, (rt->flags & API_IDEMPOTENT) != 0, rs->method, rs->path, rs->body.buf,
                         rs->body.len) != 0)
        return;
    int rc = rt->h(req, resp);
    if (rc != 0 || resp->status == 0 || resp->kind == RESP_NONE) {
        if (rc != 0 && resp->status >= 400)
            ; /* the handler reported its own error and also returned non-zero: keep its answer */
        else {
            lt_log(LOG_ERROR, "handler for %s %s returned %d without a response", rs->method, rt->pattern,
                   rc);
            api_resp_clear(resp, 0);
            api_error(resp, 500, "internal_error", "internal error (request %s)", req->request_id);
        }
    }
    api_idem_settle(req, resp);
}

static void consume_body(req_state *rs, const char *data, size_t n) {
    rs->received += n;
    if (rs->too_large || rs->early_status) return; /* discarding */
    if (rs->received > rs->max_body) {
        rs->too_large = 1;
        sb_free(&rs->body);
        return;
    }
    if (rs->route->flags & API_RAW_BODY) {
        if (rs->spool_failed) return;
        while (n > 0) {
            ssize_t k = write(rs->spool_fd, data, n);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) {
                lt_log(LOG_ERROR, "cannot write upload spool %s: %s", rs->spool_path, strerror(errno));
                rs->spool_failed = 1;
                return;
            }
            data += k;
            n -= (size_t)k;
        }
    } else {
        sb_append(&rs->body, data, n);
    }
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version, const char *upload_data,
                                      size_t *upload_data_size, void **con_cls) {
    api_server *srv = cls;
    req_state *rs = *con_cls;
    if (!rs) {
        rs = calloc(1, sizeof *rs);
        if (!rs) return MHD_NO;
        *con_cls = rs;
        atomic_fetch_add(&srv->inflight, 1);
        rs->srv = srv;
        rs->t0 = lt_mono_s();
        rs->spool_fd = -1;
        rs->resp.fd = -1;
        rs->priv.conn = conn;
        rs->req.priv = &rs->priv;
        rs->req.ctx = &srv->ctx;
        snprintf(rs->method, sizeof rs->method, "%s", method);
        /* Path without a trailing slash (except "/"). */
        rs->path = lt_strdup(url && *url ? url : "/");
        size_t pl = strlen(rs->path);
        if (pl > 1 && rs->path[pl - 1] == '/') rs->path[pl - 1] = '\0';
        rs->req.method = rs->method;
        rs->req.path = rs->path;
        rs->resp.request_id = rs->req.request_id;
        const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        if (request_id_ok(rid)) {
            snprintf(rs->req.request_id, sizeof rs->req.request_id, "%s", rid);
        } else {
            char u[LT_UUID_LEN];
            lt_uuid4(u);
            snprintf(rs->req.request_id, sizeof rs->req.request_id, "%s", u);
        }
        lt_log_set_context(rs->req.request_id);
        rs->route = router_match(srv->router, method, rs->path, &rs->req, &rs->early_status, rs->allow,
                                 sizeof rs->allow);
        rs->req.pattern = rs->route ? rs->route->pattern : NULL;
        rs->max_body = rs->route && rs->route->max_body ? rs->route->max_body : srv->cfg.max_body;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        uint64_t content_length = cl ? strtoull(cl, NULL, 10) : 0;
        if (strict_head(rs, conn, version) != 0) rs->early_status = -1;
        if (!rs->early_status && content_length > rs->max_body) rs->early_status = 413;
        if (!rs->early_status && admit(rs) != 0) rs->early_status = -1;
        if (rs->early_status) {
            const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
            int wants_continue = expect && !strcasecmp(expect, "100-continue");
            if (content_length == 0 || wants_continue || content_length > DRAIN_LIMIT) {
                if (rs->early_status > 0) set_error_for_status(rs, rs->early_status);
                enum MHD_Result r = respond(rs, conn);
                lt_log_set_context(NULL);
                return r;
            }
            lt_log_set_context(NULL);
            return MHD_YES; /* read and discard the body, answer at the end */
        }
        if (rs->route->flags & API_RAW_BODY) {
            rs->spool_path = lt_path_join(srv->tmp_dir, "upload-XXXXXX");
            rs->spool_fd = mkostemp(rs->spool_path, O_CLOEXEC);
            if (rs->spool_fd >= 0) flock(rs->spool_fd, LOCK_EX | LOCK_NB); /* alive: see blob_sweep_dir */
            if (rs->spool_fd < 0) {
                lt_log(LOG_ERROR, "cannot create upload spool in %s: %s", srv->tmp_dir, strerror(errno));
                rs->spool_failed = 1;
                free(rs->spool_path);
                rs->spool_path = NULL;
            }
        }
        lt_log_set_context(NULL);
        return MHD_YES;
    }
    if (rs->responded) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    lt_log_set_context(rs->req.request_id);
    if (*upload_data_size > 0) {
        consume_body(rs, upload_data, *upload_data_size);
        *upload_data_size = 0;
        lt_log_set_context(NULL);
        return MHD_YES;
    }
    pipeline(rs);
    enum MHD_Result r = respond(rs, conn);
    lt_log_set_context(NULL);
    return r;
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    (void)conn;
    (void)toe;
    api_server *srv = cls;
    req_state *rs = *con_cls;
    if (!rs) return;
    *con_cls = NULL;
    api_resp_clear(&rs->resp, 0);
    for (int i = 0; i < rs->req.nparams; i++)
        free(rs->req.param_values[i]);
    json_decref(rs->req.json);
    sb_free(&rs->body);
    if (rs->spool_fd >= 0) close(rs->spool_fd);
    if (rs->spool_path) {
        unlink(rs->spool_path); /* the handler may have renamed it away: then this fails harmlessly */
        free(rs->spool_path);
    }
    free(rs->path);
    /* A big body leaves its pages with the allocator (the body, the parsed JSON, the answer): hand them back
     * to the system, or a burst of large requests keeps the peak RSS for good. */
    int big = rs->received >= BIG_REQUEST;
    free(rs);
    if (big) malloc_trim(0);
    pthread_mutex_lock(&srv->streams_mu);
    atomic_fetch_sub(&srv->inflight, 1);
    pthread_cond_broadcast(&srv->streams_cv);
    pthread_mutex_unlock(&srv->streams_mu);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    lt_log(LOG_WARN, "http: %s", buf);
}

/* ================================================================================================== */
/* core routes                                                                                        */

static int h_healthz(api_req *req, api_resp *resp) {
    (void)req;
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ok"));
    api_json(resp, 200, o);
    return 0;
}

static int h_readyz(api_req *req, api_resp *resp) {
    lt_err err = {0};
    if (db_ping(req->ctx->db, &err) != 0) {
        lt_log(LOG_WARN, "readiness: store does not answer: %s", err.msg);
        api_error(resp, 503, "service_unavailable", "the store does not answer");
        return 0;
    }
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ready"));
    api_json(resp, 200, o);
    return 0;
}

static int h_metrics(api_req *req, api_resp *resp) {
    strbuf sb = STRBUF_INIT;
    api_metrics_render(req->ctx, &sb);
    api_raw(resp, 200, "text/plain; version=0.0.4; charset=utf-8", sb.buf ? sb.buf : "", sb.len);
    sb_free(&sb);
    return 0;
}

/* Idempotency records live 24 h: drop the expired ones at start and then hourly. */
static void idem_purge_loop(api_ctx *ctx, void *arg) {
    (void)arg;
    do {
        lt_err err = {0};
        int64_t n = store_idem_purge(ctx->db, &err);
        if (n < 0)
            lt_log(LOG_WARN, "idempotency purge failed: %s", err.msg);
        else if (n > 0)
            lt_log(LOG_INFO, "idempotency purge: %lld expired record(s) removed", (long long)n);
    } while (!api_ctx_sleep(ctx, 3600 * 1000));
}

void api_routes_core(api_router *r) {
    api_route(r, "GET", "/healthz", h_healthz, API_PUBLIC, 0);
    api_route(r, "GET", "/readyz", h_readyz, API_PUBLIC, 0);
    api_route(r, "GET", "/metrics", h_metrics, API_PUBLIC, 0);
}

/* ================================================================================================== */
/* start / stop                                                                                       */

/* "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT" into host and port. */
static int parse_listen(const char *s, char *host, size_t cap, int *port, lt_err *err) {
    const char *colon = NULL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') goto bad;
        snprintf(host, cap, "%.*s", (int)(close - s - 1), s + 1);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon)
            snprintf(host, cap, "%.*s", (int)(colon - s), s);
        else
            snprintf(host, cap, "127.0.0.1");
    }
    const char *p = colon ? colon + 1 : s;
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (!*p || *end || v < 0 || v > 65535) goto bad;
    if (!host[0]) snprintf(host, cap, "0.0.0.0");
    *port = (int)v;
    return 0;
bad:
    return lt_err_set(err, 400,
                      "listen address '%.100s' is not HOST:PORT (e.g. 127.0.0.1:8080; port 0 = any free)", s);
}

/* A non-blocking listening socket on ai's address; -1 on failure (errno set). */
static int listen_socket(const struct addrinfo *ai) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 512) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void server_free(api_server *srv) {
    if (!srv) return;
    router_free(srv->router);
    api_ratelimit_free(srv->rl);
    blob_close(srv->ctx.blobs);
    db_close(srv->ctx.db);
    for (spawned *s = srv->priv.threads, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    for (hook *h = srv->priv.hooks, *n; h; h = n) {
        n = h->next;
        free(h);
    }
    pthread_mutex_destroy(&srv->priv.mu);
    pthread_cond_destroy(&srv->priv.cv);
    pthread_mutex_destroy(&srv->streams_mu);
    pthread_cond_destroy(&srv->streams_cv);
    free(srv->db_url);
    free(srv->models_dir);
    free(srv->tmp_dir);
    free(srv);
}

/* The data dir holds the store and uploads: private to the server's user (docs/security.md). A directory
 * made earlier with group/other bits loses them; one that cannot be changed (another user's) is logged. */
static void tighten_dir(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode) || !(st.st_mode & 077)) return;
    if (chmod(path, st.st_mode & 0700) != 0)
        lt_log(LOG_WARN, "cannot make %s private (mode %03o): %s", path, (unsigned)(st.st_mode & 0777),
               strerror(errno));
}

api_server *api_server_start(const api_config *cfg, lt_err *err) {
    api_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        lt_err_set(err, 500, "out of memory starting the server");
        return NULL;
    }
    srv->cfg = *cfg;
    srv->listen_fd = -1;
    pthread_mutex_init(&srv->priv.mu, NULL);
    cond_init_mono(&srv->priv.cv);
    pthread_mutex_init(&srv->streams_mu, NULL);
    cond_init_mono(&srv->streams_cv);
    if (!srv->cfg.data_dir || !*srv->cfg.data_dir) srv->cfg.data_dir = "./lathe-data";
    if (!srv->cfg.max_body) srv->cfg.max_body = API_DEFAULT_MAX_BODY;
    if (srv->cfg.threads <= 0) srv->cfg.threads = 8;
    if (!srv->cfg.listen) srv->cfg.listen = "127.0.0.1:8080";
    if (srv->cfg.db_url && *srv->cfg.db_url) {
        srv->db_url = lt_strdup(srv->cfg.db_url);
    } else {
        size_t n = strlen(srv->cfg.data_dir) + 32;
        srv->db_url = malloc(n);
        if (!srv->db_url) abort();
        snprintf(srv->db_url, n, "sqlite:%s/lathe.db", srv->cfg.data_dir);
    }
    srv->models_dir = srv->cfg.models_dir && *srv->cfg.models_dir ? lt_strdup(srv->cfg.models_dir)
                                                                  : lt_path_join(srv->cfg.data_dir, "models");
    srv->tmp_dir = lt_path_join(srv->cfg.data_dir, "tmp");
    srv->cfg.db_url = srv->db_url;
    srv->cfg.models_dir = srv->models_dir;
    srv->ctx.cfg = &srv->cfg;
    srv->ctx.priv = &srv->priv;
    srv->ctx.data_dir = srv->cfg.data_dir;
    srv->ctx.models_dir = srv->models_dir;
    srv->ctx.tmp_dir = srv->tmp_dir;
    umask(077); /* everything the server (and what it spawns) creates is 0600 / 0700 */
    if (lt_mkdir_p(srv->cfg.data_dir, 0700, err) != 0 || lt_mkdir_p(srv->tmp_dir, 0700, err) != 0 ||
        lt_mkdir_p(srv->models_dir, 0700, err) != 0) {
        lt_err_prefix(err, "data dir: ");
        server_free(srv);
        return NULL;
    }
    tighten_dir(srv->cfg.data_dir);
    tighten_dir(srv->tmp_dir);
    srv->ctx.db = db_open(srv->db_url, err);
    if (!srv->ctx.db || db_migrate(srv->ctx.db, err) != 0) {
        server_free(srv);
        return NULL;
    }
    srv->ctx.blobs = blob_open(srv->cfg.data_dir, err);
    if (!srv->ctx.blobs) {
        server_free(srv);
        return NULL;
    }
    { /* what killed pushes left: blob temp files and upload spools no live process holds */
        lt_err se = {0};
        int parts = blob_sweep(srv->ctx.blobs, &se);
        int spools = blob_sweep_dir(srv->tmp_dir, "upload-", "", &se);
        if (parts > 0 || spools > 0)
            lt_log(LOG_INFO, "removed leftovers of interrupted uploads: %d blob temp file(s), %d spool(s)",
                   parts > 0 ? parts : 0, spools > 0 ? spools : 0);
        if (parts < 0 || spools < 0) lt_log(LOG_WARN, "cannot sweep upload leftovers: %s", se.msg);
    }
    srv->rl = api_ratelimit_new(srv->cfg.rate_per_s, srv->cfg.rate_burst);
    srv->router = calloc(1, sizeof *srv->router);
    if (!srv->router) abort();
    srv->router->ctx = &srv->ctx;
    api_routes_core(srv->router);
    if (api_ctx_spawn(&srv->ctx, "stream-poller", poller_main, srv, err) != 0 ||
        api_ctx_spawn(&srv->ctx, "idempotency-purge", idem_purge_loop, NULL, err) != 0) {
        api_server_stop(srv);
        return NULL;
    }
    api_routes_identity(srv->router);
    api_routes_artifacts(srv->router);
    api_routes_jobs(srv->router);
    api_routes_compat(srv->router);
    api_routes_openapi(srv->router);
    if (!srv->cfg.no_ui) api_routes_ui(srv->router);
    if (srv->cfg.routes_extra) srv->cfg.routes_extra(srv->router);

    int port = 0;
    if (parse_listen(srv->cfg.listen, srv->host, sizeof srv->host, &port, err) != 0) {
        api_server_stop(srv);
        return NULL;
    }
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(srv->host, portstr, &hints, &ai);
    if (gai != 0 || !ai) {
        lt_err_set(err, 400, "listen address '%s': cannot resolve host '%s': %s", srv->cfg.listen, srv->host,
                   gai_strerror(gai));
        api_server_stop(srv);
        return NULL;
    }
    srv->listen_fd = listen_socket(ai);
    freeaddrinfo(ai);
    if (srv->listen_fd < 0) {
        lt_err_set(err, 500, "cannot listen on %s: the address is in use or not available here",
                   srv->cfg.listen);
        api_server_stop(srv);
        return NULL;
    }
    /* libmicrohttpd gets its connections from the gate (gate.c); its connection memory stays above the
     * gate's head limits, so that a head the gate passed is never refused with libmicrohttpd's own page. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    srv->mhd =
        MHD_start_daemon(flags, 0, NULL, NULL, access_handler, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                         MHD_OPTION_THREAD_POOL_SIZE, (unsigned)srv->cfg.threads, MHD_OPTION_NOTIFY_COMPLETED,
                         request_completed, srv, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, MHD_MEMORY_LIMIT, MHD_OPTION_END);
    if (!srv->mhd) {
        lt_err_set(err, 500, "cannot start the HTTP server on %s", srv->cfg.listen);
        api_server_stop(srv);
        return NULL;
    }
    srv->gate = api_gate_start(srv->listen_fd, srv->mhd, err);
    if (!srv->gate) {
        api_server_stop(srv);
        return NULL;
    }
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    srv->port = port;
    if (getsockname(srv->listen_fd, (struct sockaddr *)&sa, &salen) == 0)
        srv->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                   : ((struct sockaddr_in *)&sa)->sin_port);
    return srv;
}

int api_server_port(const api_server *srv) {
    return srv->port;
}

const char *api_server_host(const api_server *srv) {
    return srv->host;
}

api_ctx *api_server_ctx(api_server *srv) {
    return &srv->ctx;
}

void api_server_stop(api_server *srv) {
    if (!srv) return;
    /* 1. Everyone learns that we are stopping. */
    pthread_mutex_lock(&srv->priv.mu);
    atomic_store(&srv->priv.stopping, 1);
    pthread_cond_broadcast(&srv->priv.cv);
    pthread_mutex_unlock(&srv->priv.mu);
    if (srv->mhd) {
        /* 2. Stop accepting: the gate goes, with the connections still waiting at it. */
        api_gate_stop(srv->gate);
        srv->gate = NULL;
        if (srv->listen_fd >= 0) close(srv->listen_fd);
        srv->listen_fd = -1;
        /* 3. End the streams, then 4. wait for in-flight requests and producers. */
        double deadline = lt_mono_s() + SHUTDOWN_WAIT_S;
        pthread_mutex_lock(&srv->streams_mu);
        for (;;) {
            for (api_stream *s = srv->streams; s; s = s->next) {
                pthread_mutex_lock(&s->mu);
                s->closed = 1;
                stream_kick(s);
                pthread_cond_broadcast(&s->cv);
                pthread_mutex_unlock(&s->mu);
            }
            if ((atomic_load(&srv->inflight) == 0 && srv->producers == 0) || lt_mono_s() > deadline) break;
            struct timespec ts;
            abs_deadline(&ts, 50);
            pthread_cond_timedwait(&srv->streams_cv, &srv->streams_mu, &ts);
        }
        int left = atomic_load(&srv->inflight);
        pthread_mutex_unlock(&srv->streams_mu);
        if (left)
            lt_log(LOG_WARN, "shutdown: %d request(s) still open after %.0f s; closing them", left,
                   SHUTDOWN_WAIT_S);
        MHD_stop_daemon(srv->mhd);
        srv->mhd = NULL;
    }
    api_gate_stop(srv->gate); /* a start that failed after the gate */
    srv->gate = NULL;
    if (srv->listen_fd >= 0) close(srv->listen_fd);
    srv->listen_fd = -1;
    /* 5. Background threads. */
    pthread_mutex_lock(&srv->priv.mu);
    spawned *threads = srv->priv.threads;
    pthread_mutex_unlock(&srv->priv.mu);
    for (spawned *s = threads; s; s = s->next)
        pthread_join(s->tid, NULL);
    /* 6. Hooks, newest first. */
    for (hook *h = srv->priv.hooks; h; h = h->next)
        h->fn(&srv->ctx, h->arg);
    /* 7. The store and the rest. */
    server_free(srv);
}
