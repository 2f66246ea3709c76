/* http.h: the API server's public surface: the context, the router, requests, responses, auth, errors.
 *
 * The server (server.c) runs libmicrohttpd with a pool of threads. Each request goes through: request id
 * (X-Request-Id echoed or generated; also the log context of the thread), route match (404/405 in the error
 * envelope), body limits (413), client version (426), authentication (401) and the per-key rate limit (429)
 * unless the route is public, body checks for JSON routes (400 for non-JSON, invalid UTF-8, wrong content
 * type), the Idempotency-Key machinery when the route asks for it, and then the route's handler. Every
 * non-2xx answer uses the error envelope of docs/spec.md §2.1: {"code", "detail", "type", "errors"?}.
 *
 * A handler has the shape `int handler(api_req *req, api_resp *resp)`: it reads the request, fills the
 * response through the api_* helpers below, and returns 0. A handler that returns non-zero, or returns
 * without setting a response, produces a 500 `internal_error` naming the request id. Handlers run on a pool
 * thread and may block briefly on the store; long work belongs to background threads (api_ctx_spawn).
 *
 * Ownership: everything reachable from api_req belongs to the server and lives until the handler returns.
 * Response helpers take ownership of the json_t they are given (even on error). Strings passed to the
 * helpers are copied. */
#ifndef LATHE_API_HTTP_H
#define LATHE_API_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "store/db.h"
#include "store/identity.h"
#include "util/err.h"
#include "util/strbuf.h"

/* ---- configuration and the server context ---- */

struct api_router; /* the route table, see "the router" below */

/* Settings of `lathe serve` (docs/spec.md §1), already resolved flag > env > default. Strings are owned by
 * whoever filled the struct and must outlive the server. */
typedef struct api_config {
    const char *data_dir;           /* LATHE_DATA_DIR, default ./lathe-data */
    const char *db_url;             /* LATHE_DB, default sqlite:<data dir>/lathe.db */
    const char *listen;             /* LATHE_LISTEN, default 127.0.0.1:8080; port 0 = pick a free one */
    const char *models_dir;         /* LATHE_MODELS_DIR, default <data dir>/models */
    int workers;                    /* LATHE_WORKERS: in-process workers, default 1; 0 = none */
    double rate_per_s;              /* LATHE_RATE_LIMIT RATE part, default 50; 0 = rate limiting off */
    double rate_burst;              /* LATHE_RATE_LIMIT BURST part, default 100 */
    int max_active_jobs;            /* LATHE_MAX_ACTIVE_JOBS, default 64 */
    const char *min_client_version; /* LATHE_MIN_CLIENT_VERSION, e.g. "lathe-cli=0.3.0,dreadnode-sdk=2.0.0";
                                      NULL/"" = no check */
    size_t max_body;                /* LATHE_MAX_BODY for JSON bodies, default 1 MiB */
    int lease_s;                    /* LATHE_LEASE_S, default 60 */
    const char *worlds_url;         /* LATHE_WORLDS_URL, NULL/"" = no environment backend */
    int threads;                    /* HTTP pool threads, default 8 */
    int max_streams;                /* LATHE_MAX_STREAMS: open event streams in all, 0 = default 256 */
    int max_streams_per_key;        /* LATHE_MAX_STREAMS_PER_KEY: per API key, 0 = default 32 */
    int no_keep_alive;              /* LATHE_KEEP_ALIVE=0: every response closes its connection, so that
                                       every request passes the connection gate; default 0 (keep alive) */
    int no_ui;                      /* --no-ui / LATHE_UI=0: no dashboard at / and /ui/ (routes_ui.c) */
    /* Optional: registers more routes after the built-in groups (embedders, tests). NULL = none. */
    void (*routes_extra)(struct api_router *r);
} api_config;

#define API_DEFAULT_MAX_BODY ((size_t)1 << 20) /* 1 MiB */
#define API_UPLOAD_MAX_BODY ((size_t)2 << 30)  /* 2 GiB: artifact archives */
#define API_DEFAULT_MAX_STREAMS 256
#define API_DEFAULT_MAX_STREAMS_PER_KEY 32

/* One per server, shared by every handler and background thread. Handlers read the fields; nothing here is
 * written after the server starts except through the functions below. */
typedef struct api_ctx {
    db *db;            /* the store; each thread gets its own connection (db.h) */
    blob_store *blobs; /* content-addressed files under <data dir>/blobs */
    const api_config *cfg;
    const char *data_dir; /* = cfg->data_dir */
    const char *models_dir;
    const char *tmp_dir;          /* <data dir>/tmp: spooled uploads, scratch files */
    struct api_ctx_private *priv; /* server internals */
} api_ctx;

/* 1 once shutdown has begun (SIGTERM/SIGINT or api_server_stop): background loops should return. */
int api_ctx_stopping(const api_ctx *ctx);
/* Sleeps up to ms, waking early at shutdown. Returns 1 when the server is stopping, else 0. */
int api_ctx_sleep(api_ctx *ctx, int ms);
/* Starts a background thread running fn(ctx, arg). At shutdown the server sets the stopping flag, wakes
 * sleepers, and joins every spawned thread (after the HTTP side has drained) before closing the store; fn
 * must therefore return soon after api_ctx_stopping() turns 1. name is for logs. 0 or -1 with err. */
int api_ctx_spawn(api_ctx *ctx, const char *name, void (*fn)(api_ctx *ctx, void *arg), void *arg,
                  lt_err *err);
/* Registers fn(ctx, arg) to run at shutdown after the spawned threads were joined and before the store
 * closes (in reverse order of registration). */
void api_ctx_on_shutdown(api_ctx *ctx, void (*fn)(api_ctx *ctx, void *arg), void *arg);

/* ---- the principal: who is calling ---- */

typedef struct api_principal {
    int authenticated; /* 0 on public routes */
    store_user user;   /* the key's user */
    store_apikey key;  /* key.id, key.scopes, key.org_id / key.workspace_id limits ("" = none) */
} api_principal;

/* ---- requests ---- */

#define API_MAX_PARAMS 8
#define API_REQUEST_ID_MAX 128

typedef struct api_req {
    api_ctx *ctx;
    const char *method;  /* "GET", "POST", ... */
    const char *path;    /* "/api/v1/org/acme/workspaces" (no query string) */
    const char *pattern; /* the route pattern that matched: "/api/v1/org/{org}/workspaces" */
    char request_id[API_REQUEST_ID_MAX];
    api_principal principal;

    /* Body. JSON routes: body/body_len hold the bytes (NUL-terminated) and json the parsed value (NULL when
     * the body was empty). Raw routes (API_RAW_BODY): body is NULL, the bytes are in the file body_path
     * (deleted after the handler returns: move it away with rename(2) or copy it, e.g. blob_put_file). */
    const char *body;
    size_t body_len;
    json_t *json;
    const char *body_path;
    const char *content_type; /* the request's Content-Type, NULL when absent */

    /* Path parameters, by name from the pattern ({org} -> "org"); use api_param. */
    int nparams;
    const char *param_names[API_MAX_PARAMS];
    char *param_values[API_MAX_PARAMS];

    struct api_req_private *priv; /* server internals */
} api_req;

/* A path parameter's (URL-decoded) value, or NULL when the pattern has no such name. */
const char *api_param(const api_req *req, const char *name);
/* A query parameter's (decoded) value, or NULL when absent. */
const char *api_query(const api_req *req, const char *name);
/* A request header's value (case-insensitive name), or NULL. */
const char *api_header(const api_req *req, const char *name);

/* Parses an integer query parameter. Absent: *out = dflt, 0. Present but not an integer in [min, max]: fills
 * resp with a 422 validation error (loc ["query", name], type type_error / greater_than_equal /
 * less_than_equal) and returns -1 (the handler then returns 0). */
typedef struct api_resp api_resp;
int api_query_int(const api_req *req, api_resp *resp, const char *name, int64_t dflt, int64_t min,
                  int64_t max, int64_t *out);

/* ---- responses ---- */

/* A JSON response; takes ownership of body (NULL body = empty JSON object). Sets Content-Type
 * application/json; charset=utf-8. */
void api_json(api_resp *resp, int status, json_t *body);
/* 204 No Content. */
void api_no_content(api_resp *resp);
/* The error envelope: {"code": status, "detail": <printf>, "type": type}. */
void api_error(api_resp *resp, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with an "errors" array (taken). Used for 404 of references in a body, 422. */
void api_error_with(api_resp *resp, int status, const char *type, json_t *errors, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Maps an lt_err from the store or another library to the envelope: 400 bad_request, 401, 403, 404
 * not_found, 409 conflict, 413, 422 validation_error, 503/502/504 -> bad_gateway / gateway_timeout, anything
 * else 500 internal_error (detail names the request id; err's message is logged, never sent). */
void api_error_from(api_resp *resp, const lt_err *err);
/* Adds a response header (copied). Use for Location, Retry-After, Content-Disposition... */
void api_header_add(api_resp *resp, const char *name, const char *value);
/* A raw response from memory (copied), e.g. text or a small binary. */
void api_raw(api_resp *resp, int status, const char *content_type, const void *data, size_t n);
/* A file download, streamed from disk: the file is opened now (404 envelope when it cannot be). Sets
 * Content-Length. 0, or -1 after writing the error response. */
int api_file(api_resp *resp, int status, const char *content_type, const char *path);
/* The status set so far (0 when none). */
int api_resp_status(const api_resp *resp);

/* ---- validation errors (docs/spec.md §2.1) ---- */

/* A loc array: api_loc("body", "config", "batch_size", NULL). Strings only; append integers (array
 * indexes) with json_array_append_new(loc, json_integer(i)). Returns a new reference. */
json_t *api_loc(const char *first, ...);
/* The most items an errors[] array carries; the rest are counted and the detail says how many in all. */
#define API_ERRORS_MAX 100

/* Appends {loc, msg, type} to errors (a JSON array). Takes ownership of loc. msg is printf-formatted. Past
 * API_ERRORS_MAX items it only counts (in a private last item that api_validation_error / api_error_with
 * take out: pass such an array to nothing else). */
void api_verr_add(json_t *errors, json_t *loc, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sends the 422 envelope for a non-empty errors array (taken): detail is the first error as
 * "<loc without the leading 'body', dotted> <msg>" ("config.batch_size must be >= 1"), plus
 * " (and N more errors)" when there are more. */
void api_validation_error(api_resp *resp, json_t *errors);
/* Adds one `extra_forbidden` error for every key of obj not in allowed (NULL-terminated); loc = prefix +
 * key (prefix is borrowed, e.g. api_loc("body", NULL)). Returns the number added. */
int api_verr_extra_fields(json_t *errors, const json_t *obj, const char *const *allowed,
                          const json_t *prefix);

/* ---- authorization (docs/spec.md §2.1 and §3) ---- */

/* Decides whether the request's principal may act on org (slug) and, when ws is not NULL, on workspace ws
 * (slug) with at least min_role (STORE_ROLE_*) and the key scope `scope` (STORE_SCOPE_* bit, 0 = none
 * needed). In order:
 *   org unknown, or the user is not a member              -> 404 not_found ("organization 'x' not found")
 *   key limited to another org                            -> 403 permission_denied
 *   ws given and unknown in the org                       -> 404 not_found
 *   key limited to another workspace                      -> 403
 *   role below min_role                                   -> 403
 *   key lacks the scope                                   -> 403
 * On success returns 0 and fills org_out / ws_out / role_out (each may be NULL). Otherwise writes the error
 * into resp and returns -1: the handler then returns 0. */
int api_authorize(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role, unsigned scope,
                  store_org *org_out, store_workspace *ws_out, int *role_out);
/* Identity administration (POST /orgs, workspaces, projects, members and their list, API keys: see
 * docs/security.md): needs an unrestricted key (all scopes, no org or workspace limit), else 403. org NULL: a
 * user-level action; otherwise api_authorize's checks for org (and ws when not NULL) with min_role run
 * first. Both functions claim the request's Idempotency-Key when they pass: a replay or 409 is then written
 * into resp and -1 returned, like a refusal. */
int api_authorize_admin(api_req *req, api_resp *resp, const char *org, const char *ws, int min_role,
                        store_org *org_out, store_workspace *ws_out);
/* 1 when the key has every scope and no org or workspace limit. */
int api_key_unrestricted(const store_apikey *k);

/* ---- streaming responses (Server-Sent Events, long downloads) ---- */

typedef struct api_stream api_stream;
/* The producer: runs on its own thread after the handler returns; writes chunks with api_stream_write and
 * returns when done (the response then ends). It must return soon after a write or wait reports -1 (client
 * gone or server stopping). arg is freed with free_arg (may be NULL) after fn returns. */
typedef void (*api_stream_fn)(api_stream *s, void *arg);

/* Makes resp a streaming response with status and content type (SSE: "text/event-stream"; the server adds
 * Cache-Control: no-cache) whose producer fn runs on a thread of its own. 0, or -1 with a 500 in resp. The
 * server caps open streams of both kinds (this and api_stream_start_polled: max_streams in all,
 * max_streams_per_key per API key): past a cap the request gets a 429 rate_limited naming the limit and its
 * flag instead (the producer never runs; arg is freed). */
int api_stream_start(api_resp *resp, int status, const char *content_type, api_stream_fn fn, void *arg,
                     void (*free_arg)(void *));
/* A polled stream costs no thread of its own: the server's one stream poller thread calls tick(s, arg)
 * about every period_ms (the first time right after the response starts) and serves every polled stream in
 * turn, so tick must return quickly (a store query is fine; never wait). It writes with api_stream_write /
 * api_stream_event (which never block for a polled stream: the poller skips a stream whose client has more
 * than 1 MiB unread) and returns API_TICK_AGAIN (call again after period_ms), API_TICK_SOON (more to send:
 * call again at the next poll) or API_TICK_DONE (the response ends). A stream whose client has gone is not
 * ticked again. arg is freed with free_arg after the last tick. Caps and 429 as for api_stream_start. */
enum { API_TICK_AGAIN = 0, API_TICK_DONE = 1, API_TICK_SOON = 2 };
typedef int (*api_stream_tick_fn)(api_stream *s, void *arg);
int api_stream_start_polled(api_resp *resp, int status, const char *content_type, api_stream_tick_fn tick,
                            int period_ms, void *arg, void (*free_arg)(void *));
/* Queues bytes for the client (copied). Blocks only while more than 1 MiB is queued. 0, or -1 when the
 * client has gone or the server is stopping. */
int api_stream_write(api_stream *s, const void *data, size_t n);
int api_stream_printf(api_stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes one SSE event: "event: <event>\ndata: <json>\n\n" (json is taken; NULL = "{}"). */
int api_stream_event(api_stream *s, const char *event, json_t *json);
/* Waits up to ms (or until the stream closes). 0 = time passed, -1 = client gone or server stopping. */
int api_stream_wait(api_stream *s, int ms);
/* 1 when the client has gone or the server is stopping. */
int api_stream_closed(api_stream *s);
/* The server context and the request id of the request that opened the stream. */
api_ctx *api_stream_ctx(api_stream *s);
const char *api_stream_request_id(api_stream *s);

/* ---- the router ---- */

typedef struct api_router api_router;
typedef int (*api_handler)(api_req *req, api_resp *resp);

enum {
    API_PUBLIC = 1 << 0,     /* no authentication, no rate limit (healthz, openapi.json) */
    API_RAW_BODY = 1 << 1,   /* the body is spooled to a file (req->body_path), any Content-Type */
    API_IDEMPOTENT = 1 << 2, /* honour Idempotency-Key: replay a stored 2xx for the same key + body,
                                409 idempotency_conflict for a different body */
};

/* Registers a route. pattern segments in braces are parameters: "/api/v1/org/{org}/ws/{ws}/training/jobs/
 * {job_id}". A literal segment beats a parameter at the same position. flags: API_* above. max_body: the
 * largest accepted body in bytes; 0 = the server's JSON limit (LATHE_MAX_BODY) or, with API_RAW_BODY,
 * API_UPLOAD_MAX_BODY. Returns 0, -1 when the table is full or the pattern is malformed (a programming
 * error, also logged). Registering the same method + pattern twice replaces the first. */
int api_route(api_router *r, const char *method, const char *pattern, api_handler h, unsigned flags,
              size_t max_body);

/* The context the routes will run with (to spawn background threads while registering). */
api_ctx *api_router_ctx(api_router *r);

/* Route groups: server.c calls each at start, in this order. */
void api_routes_core(api_router *r);      /* healthz, readyz, metrics (server.c) */
void api_routes_identity(api_router *r);  /* docs/spec.md §3 identity (routes_identity.c) */
void api_routes_artifacts(api_router *r); /* docs/spec.md §3.1 (routes_artifacts.c) */
void api_routes_jobs(api_router *r);      /* docs/spec.md §4 (routes_jobs.c) */
void api_routes_compat(api_router *r);    /* upstream-compatible aliases (routes_compat.c) */
void api_routes_openapi(api_router *r);   /* GET /api/v1/openapi.json (openapi.c) */
void api_routes_ui(api_router *r);        /* GET / and /ui/{file}: the dashboard (routes_ui.c) */

/* ---- metrics (Prometheus text at GET /metrics) ---- */

/* A collector appends complete Prometheus lines (with # HELP / # TYPE) to out; it runs on a request
 * thread and may query the store. Register at route registration time; at most 32. */
typedef void (*api_metrics_fn)(api_ctx *ctx, strbuf *out);
void api_metrics_add_collector(api_metrics_fn fn);

/* ---- the server ---- */

typedef struct api_server api_server;

/* Opens the store (and migrates it), the blob store, registers every route group, and starts listening on
 * cfg->listen. When port 0 was asked, api_server_port tells the chosen one. NULL with err on failure. cfg
 * must outlive the server. */
api_server *api_server_start(const api_config *cfg, lt_err *err);
int api_server_port(const api_server *srv);
const char *api_server_host(const api_server *srv);
api_ctx *api_server_ctx(api_server *srv);
/* Graceful stop: stop accepting, let in-flight requests finish (streams are told to close), stop background
 * threads, run shutdown hooks, close the store. Frees srv. */
void api_server_stop(api_server *srv);

/* Fills cfg with the defaults of docs/spec.md §1: data_dir "./lathe-data", listen 127.0.0.1:8080, workers 1,
 * rate 50:100, max_active_jobs 64, max_body 1 MiB, lease_s 60, threads 8; db_url and models_dir NULL, meaning
 * "derived from data_dir" (sqlite:<data dir>/lathe.db, <data dir>/models) by api_server_start. */
void api_config_defaults(api_config *cfg);

/* Parses "RATE:BURST" or "0" (off) or "RATE" (burst = 2 x rate). -1 with err on bad input. */
int api_parse_rate_limit(const char *s, double *rate, double *burst, lt_err *err);

/* Checks a User-Agent against a LATHE_MIN_CLIENT_VERSION list ("name=semver,..."): 1 when the client is a
 * named client older than its minimum (must get 426), 0 otherwise (unknown clients pass). The required
 * version is written to need (may be NULL, 32 bytes). -1 with err when the list itself is malformed. */
int api_client_too_old(const char *min_list, const char *user_agent, char need[32], lt_err *err);

#endif
