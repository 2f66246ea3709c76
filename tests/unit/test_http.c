/* test_http.c: the HTTP core (http.h) in process: configuration parsers, the token bucket on a synthetic
 * clock, validation-error rendering, and a real server on a free port with test routes (registered through
 * api_config.routes_extra) exercised with libcurl: 500 for a handler that forgets to answer, SSE streaming,
 * a stream that must end when the server stops, raw-body spooling with its limit, file downloads, query
 * parsing, route specificity, background threads and shutdown hooks. */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/http.h"
#include "api/http_internal.h"
#include "util/util.h"

/* ---- pure functions ---- */

static void test_config_parsers(void **state) {
    (void)state;
    api_config c;
    api_config_defaults(&c);
    assert_true(c.rate_per_s == 50 && c.rate_burst == 100);
    assert_int_equal(c.max_body, 1 << 20);
    assert_int_equal(c.max_active_jobs, 64);
    assert_int_equal(c.lease_s, 60);
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_string_equal(c.data_dir, "./lathe-data");
    double r, b;
    lt_err err = {0};
    assert_int_equal(api_parse_rate_limit("50:100", &r, &b, &err), 0);
    assert_true(r == 50 && b == 100);
    assert_int_equal(api_parse_rate_limit("0", &r, &b, &err), 0);
    assert_true(r == 0);
    assert_int_equal(api_parse_rate_limit("10", &r, &b, &err), 0);
    assert_true(r == 10 && b == 20);
    assert_int_equal(api_parse_rate_limit("0.5:3", &r, &b, &err), 0);
    assert_true(r == 0.5 && b == 3);
    const char *bad[] = {"", "a:b", "-1:2", "5:0", "5:", ":5", "1:2:3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lt_err_clear(&err);
        assert_int_equal(api_parse_rate_limit(bad[i], &r, &b, &err), -1);
        assert_int_equal(err.code, 400);
    }
    char need[32];
    const char *list = "lathe-cli=0.3.0, dreadnode-sdk=2.0.0";
    assert_int_equal(api_client_too_old(list, "lathe-cli/0.2.9", need, &err), 1);
    assert_string_equal(need, "0.3.0");
    assert_int_equal(api_client_too_old(list, "lathe-cli/0.3.0", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "lathe-cli/0.10.0", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "lathe-cli/1", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "lathe-cli/0.2", need, &err), 1);
    assert_int_equal(api_client_too_old(list, "python/3.12 dreadnode-sdk/1.99.99", need, &err), 1);
    assert_string_equal(need, "2.0.0");
    assert_int_equal(api_client_too_old(list, "dreadnode-sdk/2.0.0-rc1", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "curl/7.0.0", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "lathe-cli/garbage", need, &err), 0);
    assert_int_equal(api_client_too_old(list, "", need, &err), 0);
    assert_int_equal(api_client_too_old(list, NULL, need, &err), 0);
    assert_int_equal(api_client_too_old(NULL, "lathe-cli/0.0.1", need, &err), 0);
    assert_int_equal(api_client_too_old("lathe-cli", "lathe-cli/0.0.1", need, &err), -1);
    assert_non_null(strstr(err.msg, "name=X.Y.Z"));
    assert_int_equal(api_client_too_old("lathe-cli=x.y", "lathe-cli/0.0.1", need, &err), -1);
}

static void test_ratelimit_synthetic_clock(void **state) {
    (void)state;
    api_ratelimit *rl = api_ratelimit_new(2, 3);
    int retry = 0;
    for (int i = 0; i < 3; i++)
        assert_true(api_ratelimit_take(rl, "k1", 100.0, &retry));
    assert_false(api_ratelimit_take(rl, "k1", 100.0, &retry));
    assert_int_equal(retry, 1);
    assert_true(api_ratelimit_take(rl, "k2", 100.0, &retry)); /* another key, another bucket */
    assert_false(api_ratelimit_take(rl, "k1", 100.25, &retry));
    assert_true(api_ratelimit_take(rl, "k1", 100.5, &retry)); /* one token after 0.5 s at 2/s */
    assert_false(api_ratelimit_take(rl, "k1", 100.5, &retry));
    assert_true(api_ratelimit_take(rl, "k1", 1000.0, &retry)); /* refilled, capped at burst */
    assert_true(api_ratelimit_take(rl, "k1", 1000.0, &retry));
    assert_true(api_ratelimit_take(rl, "k1", 1000.0, &retry));
    assert_false(api_ratelimit_take(rl, "k1", 1000.0, &retry));
    api_ratelimit_free(rl);
    /* Slow rate: Retry-After rounds up to whole seconds. */
    rl = api_ratelimit_new(0.1, 1);
    assert_true(api_ratelimit_take(rl, "k", 0, &retry));
    assert_false(api_ratelimit_take(rl, "k", 0, &retry));
    assert_int_equal(retry, 10);
    api_ratelimit_free(rl);
    rl = api_ratelimit_new(0, 0); /* off */
    for (int i = 0; i < 1000; i++)
        assert_true(api_ratelimit_take(rl, "k", 0, &retry));
    api_ratelimit_free(rl);
    /* Many keys: the table keeps working (idle full buckets are swept). */
    rl = api_ratelimit_new(1000, 2);
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        assert_true(api_ratelimit_take(rl, key, i * 1.0, &retry));
    }
    api_ratelimit_free(rl);
}

static json_t *resp_json(api_resp *r) {
    return json_loadb(r->body, r->body_len, 0, NULL);
}

static void test_validation_rendering(void **state) {
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof r);
    r.fd = -1;
    json_t *errors = json_array();
    api_verr_add(errors, api_loc("body", "config", "batch_size", NULL), "greater_than_equal", "must be >= %d",
                 1);
    json_t *loc = api_loc("body", "tags", NULL);
    json_array_append_new(loc, json_integer(3));
    api_verr_add(errors, loc, "string_too_long", "too long");
    api_validation_error(&r, errors);
    assert_int_equal(r.status, 422);
    json_t *j = resp_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 422);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "validation_error");
    assert_string_equal(json_string_value(json_object_get(j, "detail")),
                        "config.batch_size must be >= 1 (and 1 more error)");
    json_t *e1 = json_array_get(json_object_get(j, "errors"), 1);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(e1, "loc"), 2)), 3);
    assert_int_equal(json_object_size(j), 4);
    json_decref(j);
    /* extra_forbidden for unknown keys. */
    errors = json_array();
    json_t *obj = json_pack("{s:i, s:i, s:i}", "name", 1, "colour", 2, "key", 3);
    const char *allowed[] = {"name", "key", NULL};
    json_t *prefix = api_loc("body", NULL);
    assert_int_equal(api_verr_extra_fields(errors, obj, allowed, prefix), 1);
    json_t *e = json_array_get(errors, 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(e, "loc"), 1)), "colour");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "extra_forbidden");
    json_decref(prefix);
    json_decref(obj);
    api_validation_error(&r, errors);
    j = resp_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "detail")), "colour extra fields not permitted");
    json_decref(j);
    /* lt_err mapping: internal errors never leak their message. */
    lt_err err = {0};
    lt_err_set(&err, 500, "open /secret/path failed");
    r.request_id = "req-1";
    api_error_from(&r, &err);
    assert_int_equal(r.status, 500);
    assert_null(strstr(r.body, "/secret/path"));
    assert_non_null(strstr(r.body, "req-1"));
    lt_err_set(&err, 409, "already exists");
    api_error_from(&r, &err);
    assert_int_equal(r.status, 409);
    assert_non_null(strstr(r.body, "\"type\":\"conflict\""));
    api_resp_clear(&r, 0);
}

/* ---- a live server with test routes ---- */

static atomic_int g_bg_iterations, g_hook_ran, g_forever_ended;

static int h_bug(api_req *req, api_resp *resp) {
    (void)req;
    (void)resp;
    return 0; /* forgets to answer */
}

static void sse_three(api_stream *s, void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++) {
        json_t *o = json_pack("{s:i}", "n", i);
        if (api_stream_event(s, "tick", o) != 0) return;
        api_stream_wait(s, 20);
    }
}

static int h_sse(api_req *req, api_resp *resp) {
    (void)req;
    return api_stream_start(resp, 200, "text/event-stream", sse_three, NULL, NULL);
}

static void sse_forever(api_stream *s, void *arg) {
    (void)arg;
    api_stream_event(s, "hello", NULL);
    while (api_stream_wait(s, 60000) == 0) {
    }
    atomic_store(&g_forever_ended, 1);
}

static int h_forever(api_req *req, api_resp *resp) {
    (void)req;
    return api_stream_start(resp, 200, NULL, sse_forever, NULL, NULL);
}

/* A polled stream: one event per tick, three in all, then done; its arg is freed after the last tick. */
static atomic_int g_polled_freed, g_polled_forever_freed;
typedef struct polled_arg {
    int n;
    atomic_int *freed;
} polled_arg;

static void polled_free(void *p) {
    polled_arg *a = p;
    atomic_fetch_add(a->freed, 1);
    free(a);
}

static int tick_three(api_stream *s, void *arg) {
    polled_arg *a = arg;
    if (api_stream_event(s, "tick", json_pack("{s:i}", "n", a->n)) != 0) return API_TICK_DONE;
    return ++a->n == 3 ? API_TICK_DONE : a->n == 1 ? API_TICK_SOON : API_TICK_AGAIN;
}

static int h_polled(api_req *req, api_resp *resp) {
    (void)req;
    polled_arg *a = calloc(1, sizeof *a);
    a->freed = &g_polled_freed;
    return api_stream_start_polled(resp, 200, "text/event-stream", tick_three, 20, a, polled_free);
}

/* Never done by itself: only the end of the server ends it. */
static int tick_forever(api_stream *s, void *arg) {
    polled_arg *a = arg;
    if (a->n++ == 0 && api_stream_event(s, "hello", NULL) != 0) return API_TICK_DONE;
    return API_TICK_AGAIN;
}

static int h_polled_forever(api_req *req, api_resp *resp) {
    (void)req;
    polled_arg *a = calloc(1, sizeof *a);
    a->freed = &g_polled_forever_freed;
    return api_stream_start_polled(resp, 200, NULL, tick_forever, 60000, a, polled_free);
}

static int h_upload(api_req *req, api_resp *resp) {
    lt_err err = {0};
    size_t n = 0;
    char *data = lt_read_file(req->body_path, &n, &err);
    if (!data) {
        api_error_from(resp, &err);
        return 0;
    }
    char hex[LT_SHA256_HEX];
    lt_sha256_hex(data, n, hex);
    free(data);
    api_json(resp, 201,
             json_pack("{s:I, s:s, s:s}", "size", (json_int_t)n, "sha256", hex, "ctype",
                       req->content_type ? req->content_type : ""));
    return 0;
}

static char g_file[256];
static int h_file(api_req *req, api_resp *resp) {
    (void)req;
    api_file(resp, 200, "application/x-tar", g_file);
    return 0;
}

static int h_query(api_req *req, api_resp *resp) {
    int64_t n;
    if (api_query_int(req, resp, "n", 7, 1, 100, &n) != 0) return 0;
    api_json(resp, 200, json_pack("{s:I}", "n", (json_int_t)n));
    return 0;
}

static int h_item(api_req *req, api_resp *resp) {
    api_json(resp, 200, json_pack("{s:s, s:s}", "route", "param", "id", api_param(req, "id")));
    return 0;
}

static int h_item_special(api_req *req, api_resp *resp) {
    (void)req;
    api_json(resp, 200, json_pack("{s:s}", "route", "literal"));
    return 0;
}

static void bg_loop(api_ctx *ctx, void *arg) {
    (void)arg;
    while (!api_ctx_sleep(ctx, 10))
        atomic_fetch_add(&g_bg_iterations, 1);
}

static void on_stop(api_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    atomic_store(&g_hook_ran, 1);
}

static void test_routes(api_router *r) {
    api_route(r, "GET", "/t/bug", h_bug, API_PUBLIC, 0);
    api_route(r, "GET", "/t/sse", h_sse, API_PUBLIC, 0);
    api_route(r, "GET", "/t/forever", h_forever, API_PUBLIC, 0);
    api_route(r, "GET", "/t/polled", h_polled, API_PUBLIC, 0);
    api_route(r, "GET", "/t/polled-forever", h_polled_forever, API_PUBLIC, 0);
    api_route(r, "POST", "/t/upload", h_upload, API_PUBLIC | API_RAW_BODY, 512 * 1024);
    api_route(r, "GET", "/t/file", h_file, API_PUBLIC, 0);
    api_route(r, "GET", "/t/query", h_query, API_PUBLIC, 0);
    api_route(r, "GET", "/t/items/{id}", h_item, API_PUBLIC, 0);
    api_route(r, "GET", "/t/items/special", h_item_special, API_PUBLIC, 0);
    lt_err err = {0};
    api_ctx_spawn(api_router_ctx(r), "bg-test", bg_loop, NULL, &err);
    api_ctx_on_shutdown(api_router_ctx(r), on_stop, NULL);
}

typedef struct live {
    char dir[128];
    api_config cfg;
    api_server *srv;
    char base[64];
} live;

static live *live_start(void) {
    live *l = calloc(1, sizeof *l);
    snprintf(l->dir, sizeof l->dir, "/tmp/lathe-test-http-XXXXXX");
    if (!mkdtemp(l->dir)) return NULL;
    api_config_defaults(&l->cfg);
    l->cfg.data_dir = l->dir;
    l->cfg.listen = "127.0.0.1:0";
    l->cfg.rate_per_s = 0;
    l->cfg.threads = 4;
    l->cfg.routes_extra = test_routes;
    lt_err err = {0};
    l->srv = api_server_start(&l->cfg, &err);
    if (!l->srv) {
        fprintf(stderr, "api_server_start: %s\n", err.msg);
        return NULL;
    }
    snprintf(l->base, sizeof l->base, "http://127.0.0.1:%d", api_server_port(l->srv));
    return l;
}

static void live_stop(live *l) {
    if (l->srv) api_server_stop(l->srv);
    lt_rm_rf(l->dir);
    free(l);
}

typedef struct reply {
    long status;
    strbuf body, headers;
    atomic_int got_bytes;
} reply;

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
    reply *r = ud;
    sb_append(&r->body, p, sz * n);
    atomic_store(&r->got_bytes, 1);
    return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
    reply *r = ud;
    sb_append(&r->headers, p, sz * n);
    return sz * n;
}

/* One request; body (may be NULL) posted when method is POST. Returns the curl result code. */
static int http(const char *url, const char *method, const void *body, size_t n, const char *ctype,
                reply *r) {
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (ctype) {
        char line[128];
        snprintf(line, sizeof line, "Content-Type: %s", ctype);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    int rc = (int)curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc;
}

static void reply_free(reply *r) {
    sb_free(&r->body);
    sb_free(&r->headers);
}

static int group_setup(void **state) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    live *l = live_start();
    if (!l) return -1;
    *state = l;
    return 0;
}

static int group_teardown(void **state) {
    live_stop(*state);
    curl_global_cleanup();
    return 0;
}

/* errors[] holds at most API_ERRORS_MAX items; the detail counts all of them. */
static void test_validation_errors_capped(void **state) {
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof r);
    r.fd = -1;
    json_t *obj = json_object();
    for (int i = 0; i < 5000; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        json_object_set_new(obj, k, json_true());
    }
    const char *allowed[] = {"name", NULL};
    json_t *errors = json_array(), *prefix = api_loc("body", NULL);
    assert_int_equal(api_verr_extra_fields(errors, obj, allowed, prefix), 5000);
    assert_true(json_array_size(errors) <= API_ERRORS_MAX + 1);
    api_validation_error(&r, errors);
    json_t *j = resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "errors")), API_ERRORS_MAX);
    const char *d = json_string_value(json_object_get(j, "detail"));
    assert_non_null(strstr(d, "(and 4999 more errors; the first 100 are listed)"));
    json_t *last = json_array_get(json_object_get(j, "errors"), API_ERRORS_MAX - 1);
    assert_int_equal(json_object_size(last), 3); /* loc, msg, type: the private count item is gone */
    json_decref(j);
    /* api_error_with says how many were left out. */
    errors = json_array();
    for (int i = 0; i < 150; i++)
        api_verr_add(errors, api_loc("body", "x", NULL), "missing", "is required");
    api_error_with(&r, 404, "not_found", errors, "not found");
    j = resp_json(&r);
    assert_int_equal(json_array_size(json_object_get(j, "errors")), API_ERRORS_MAX);
    assert_string_equal(json_string_value(json_object_get(j, "detail")),
                        "not found (50 more errors not listed)");
    json_decref(j);
    json_decref(prefix);
    json_decref(obj);
    api_resp_clear(&r, 0);
}

typedef struct gate_case {
    const char *bytes;
    int complete;
    int want; /* API_GATE_PASS, API_GATE_MORE or a status */
} gate_case;

static void test_gate_inspect(void **state) {
    (void)state;
    static const gate_case cases[] = {
        {"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0, API_GATE_PASS},
        {"\r\nGET / HTTP/1.0\r\n\r\n", 0, API_GATE_PASS},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\n", 0, API_GATE_MORE},
        {"GET /healthz HTTP/1.1\r\nHost: x\r\n", 1, 400},
        {"GET /heal", 0, API_GATE_MORE},
        {"", 0, API_GATE_MORE},
        {"GET / HTTP/1.1\r\n\r\n", 0, 400},                       /* no Host */
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0, 400}, /* two Hosts */
        {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0, 505},
        {"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 0, 505},
        {"GET / HTTQ/1.1\r\nHost: x\r\n\r\n", 0, 400},
        {"\x16\x03\x01\x02\x00", 0, 400}, /* a TLS hello */
        {"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n12345678901234567\r\n", 0, 413},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1a;x=y\r\n", 0, API_GATE_PASS},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 0, API_GATE_PASS},
        {"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 0, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 0, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 0, 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_gate_verdict v;
        int r = api_gate_inspect(cases[i].bytes, strlen(cases[i].bytes), cases[i].complete, &v);
        if (r != cases[i].want)
            fail_msg("case %zu (%s): got %d (%s), want %d", i, cases[i].bytes, r, v.detail, cases[i].want);
        if (r >= 400) assert_true(v.status == r && v.detail[0]);
    }
    /* Size limits: 414 for the target, 431 for the header section, decided before the head is complete. */
    strbuf sb = STRBUF_INIT;
    sb_puts(&sb, "GET /");
    for (int i = 0; i < API_GATE_URI_MAX + 10; i++)
        sb_putc(&sb, 'a');
    api_gate_verdict v;
    assert_int_equal(api_gate_inspect(sb.buf, sb.len, 0, &v), 414);
    sb_reset(&sb);
    sb_puts(&sb, "GET / HTTP/1.1\r\nHost: x\r\n");
    while (sb.len < API_GATE_HEAD_MAX + 100)
        sb_puts(&sb, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    assert_int_equal(api_gate_inspect(sb.buf, sb.len, 0, &v), 431);
    sb_free(&sb);
}

static void test_handler_without_answer_is_500(void **state) {
    live *l = *state;
    char url[128];
    snprintf(url, sizeof url, "%s/t/bug", l->base);
    reply r = {0};
    assert_int_equal(http(url, "GET", NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 500);
    json_t *j = json_loadb(r.body.buf, r.body.len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "internal_error");
    const char *detail = json_string_value(json_object_get(j, "detail"));
    const char *rid = strstr(r.headers.buf, "X-Request-Id: ");
    assert_non_null(rid);
    char id[64];
    sscanf(rid + 14, "%63[^\r\n]", id);
    assert_non_null(strstr(detail, id));
    json_decref(j);
    reply_free(&r);
}

static void test_sse_stream(void **state) {
    live *l = *state;
    char url[128];
    snprintf(url, sizeof url, "%s/t/sse", l->base);
    reply r = {0};
    assert_int_equal(http(url, "GET", NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(
        r.body.buf,
        "event: tick\ndata: {\"n\":0}\n\nevent: tick\ndata: {\"n\":1}\n\nevent: tick\ndata: {\"n\":2}\n\n");
    assert_non_null(strstr(r.headers.buf, "text/event-stream"));
    assert_non_null(strstr(r.headers.buf, "Cache-Control: no-cache"));
    reply_free(&r);
}

static void test_polled_stream(void **state) {
    live *l = *state;
    char url[128];
    snprintf(url, sizeof url, "%s/t/polled", l->base);
    for (int round = 0; round < 3; round++) {
        reply r = {0};
        assert_int_equal(http(url, "GET", NULL, 0, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body.buf, "event: tick\ndata: {\"n\":0}\n\nevent: tick\ndata: "
                                        "{\"n\":1}\n\nevent: tick\ndata: {\"n\":2}\n\n");
        assert_non_null(strstr(r.headers.buf, "Cache-Control: no-cache"));
        reply_free(&r);
    }
    for (int i = 0; i < 200 && atomic_load(&g_polled_freed) < 3; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&g_polled_freed), 3);
}

static void test_raw_upload_spooled(void **state) {
    live *l = *state;
    char url[128];
    snprintf(url, sizeof url, "%s/t/upload", l->base);
    size_t n = 300000;
    char *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)(i * 13);
    char hex[LT_SHA256_HEX];
    lt_sha256_hex(data, n, hex);
    reply r = {0};
    assert_int_equal(http(url, "POST", data, n, "application/x-tar", &r), 0);
    assert_int_equal(r.status, 201);
    json_t *j = json_loadb(r.body.buf, r.body.len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), (json_int_t)n);
    assert_string_equal(json_string_value(json_object_get(j, "sha256")), hex);
    assert_string_equal(json_string_value(json_object_get(j, "ctype")), "application/x-tar");
    json_decref(j);
    reply_free(&r);
    /* Over the route's 512 KiB limit. */
    char *big = calloc(1, 600 * 1024);
    reply r2 = {0};
    assert_int_equal(http(url, "POST", big, 600 * 1024, "application/gzip", &r2), 0);
    assert_int_equal(r2.status, 413);
    assert_non_null(strstr(r2.body.buf, "payload_too_large"));
    reply_free(&r2);
    free(big);
    free(data);
    /* Spool files are gone after the requests. */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/tmp", l->dir);
    assert_int_equal(rmdir(tmp), 0);
    assert_int_equal(mkdir(tmp, 0755), 0);
}

static void test_file_download(void **state) {
    live *l = *state;
    snprintf(g_file, sizeof g_file, "%s/download.bin", l->dir);
    lt_err err = {0};
    assert_int_equal(lt_write_file_atomic(g_file, "0123456789", 10, 0644, &err), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/t/file", l->base);
    reply r = {0};
    assert_int_equal(http(url, "GET", NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.buf, "0123456789");
    assert_non_null(strstr(r.headers.buf, "Content-Length: 10"));
    assert_non_null(strstr(r.headers.buf, "application/x-tar"));
    reply_free(&r);
    unlink(g_file);
    reply r2 = {0};
    assert_int_equal(http(url, "GET", NULL, 0, NULL, &r2), 0);
    assert_int_equal(r2.status, 404);
    assert_null(strstr(r2.body.buf, l->dir)); /* never a path */
    reply_free(&r2);
}

static void test_query_and_routes(void **state) {
    live *l = *state;
    char url[160];
    struct {
        const char *path;
        long status;
        const char *needle;
    } cases[] = {
        {"/t/query", 200, "{\"n\":7}"},
        {"/t/query?n=42", 200, "{\"n\":42}"},
        {"/t/query?n=abc", 422, "\"loc\":[\"query\",\"n\"]"},
        {"/t/query?n=0", 422, "greater_than_equal"},
        {"/t/query?n=101", 422, "less_than_equal"},
        {"/t/items/abc", 200, "\"id\":\"abc\""},
        {"/t/items/special", 200, "literal"},
        {"/t/items/", 404, "not_found"},
        {"/t/items/special/", 200, "literal"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(url, sizeof url, "%s%s", l->base, cases[i].path);
        reply r = {0};
        assert_int_equal(http(url, "GET", NULL, 0, NULL, &r), 0);
        if (r.status != cases[i].status || !strstr(r.body.buf, cases[i].needle))
            fail_msg("%s: %ld %s", cases[i].path, r.status, r.body.buf);
        reply_free(&r);
    }
}

typedef struct forever_arg {
    const char *url;
    reply r;
    int rc;
} forever_arg;

static void *forever_client(void *p) {
    forever_arg *a = p;
    a->rc = http(a->url, "GET", NULL, 0, NULL, &a->r);
    return NULL;
}

static void test_shutdown_ends_streams_and_threads(void **state) {
    (void)state;
    live *l = live_start();
    assert_non_null(l);
    char url[128];
    snprintf(url, sizeof url, "%s/t/forever", l->base);
    char purl[128];
    snprintf(purl, sizeof purl, "%s/t/polled-forever", l->base);
    forever_arg a = {.url = url}, pa = {.url = purl};
    pthread_t t, pt;
    pthread_create(&t, NULL, forever_client, &a);
    pthread_create(&pt, NULL, forever_client, &pa);
    for (int i = 0; i < 500 && !(atomic_load(&a.r.got_bytes) && atomic_load(&pa.r.got_bytes)); i++)
        usleep(10000);
    assert_true(atomic_load(&a.r.got_bytes) && atomic_load(&pa.r.got_bytes));
    int before = atomic_load(&g_bg_iterations);
    assert_true(before > 0 || api_ctx_stopping(api_server_ctx(l->srv)) == 0);
    double t0 = lt_mono_s();
    api_server_stop(l->srv);
    l->srv = NULL;
    double dt = lt_mono_s() - t0;
    pthread_join(t, NULL);
    pthread_join(pt, NULL);
    assert_true(dt < 10.0); /* the producer waits 60 s between beats: shutdown must not wait for it */
    assert_int_equal(pa.rc, 0);
    assert_non_null(strstr(pa.r.body.buf, "event: hello"));
    assert_int_equal(atomic_load(&g_polled_forever_freed), 1);
    reply_free(&pa.r);
    assert_int_equal(a.rc, 0);
    assert_int_equal(a.r.status, 200);
    assert_non_null(strstr(a.r.body.buf, "event: hello"));
    assert_true(atomic_load(&g_forever_ended));
    assert_true(atomic_load(&g_hook_ran));
    reply_free(&a.r);
    live_stop(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_parsers),       cmocka_unit_test(test_ratelimit_synthetic_clock),
        cmocka_unit_test(test_validation_rendering), cmocka_unit_test(test_validation_errors_capped),
        cmocka_unit_test(test_gate_inspect),         cmocka_unit_test(test_handler_without_answer_is_500),
        cmocka_unit_test(test_sse_stream),           cmocka_unit_test(test_polled_stream),
        cmocka_unit_test(test_raw_upload_spooled),   cmocka_unit_test(test_file_download),
        cmocka_unit_test(test_query_and_routes),     cmocka_unit_test(test_shutdown_ends_streams_and_threads),
    };
    /* One server for the group (group_setup); the shutdown test starts and stops its own. */
    return cmocka_run_group_tests_name("http", tests, group_setup, group_teardown);
}
