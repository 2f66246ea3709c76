/* http_internal.h: what the files of the HTTP core (server.c, errors.c, auth.c, ratelimit.c, metrics.c,
 * serve_config.c) share with each other and with no one else. Route files use http.h only. */
#ifndef LATHE_API_HTTP_INTERNAL_H
#define LATHE_API_HTTP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "api/http.h"

#define API_RESP_MAX_HEADERS 16

enum { RESP_NONE = 0, RESP_MEM, RESP_FILE, RESP_STREAM };

/* A response being built by a handler. The server turns it into a libmicrohttpd response. */
struct api_resp {
    int status;
    int kind;
    char *content_type; /* malloc'd */
    char *body;         /* RESP_MEM: malloc'd bytes */
    size_t body_len;
    int fd; /* RESP_FILE: open descriptor, owned */
    uint64_t fd_size;
    api_stream_fn stream_fn;        /* RESP_STREAM: a producer thread runs it, or */
    api_stream_tick_fn stream_tick; /* the shared poller calls this every stream_period_ms */
    int stream_period_ms;
    void *stream_arg;
    void (*stream_free)(void *);
    int nheaders;
    char *hname[API_RESP_MAX_HEADERS], *hval[API_RESP_MAX_HEADERS];
    const char *request_id; /* borrowed from the request, for 500 details */
};

/* Frees what the response holds and makes it empty again (kind RESP_NONE, status 0). Headers are kept
 * when keep_headers is set (used when an error replaces a half-made response). */
void api_resp_clear(api_resp *r, int keep_headers);
/* Replaces a header of that name, or adds it. */
void api_resp_set_header(api_resp *r, const char *name, const char *value);

/* Idempotency-Key states of a request (auth.c). */
enum {
    API_IDEM_NONE = 0,     /* the route is not idempotent, or no Idempotency-Key was sent */
    API_IDEM_PENDING = 1,  /* noted by api_idem_prepare; claimed when the route's authorization passes */
    API_IDEM_RESERVED = 2, /* claimed and new: api_idem_settle stores the 2xx or drops the reservation */
    API_IDEM_ANSWERED = 3, /* claimed and answered (replay or 409), or settled */
};

struct api_req_private {
    struct MHD_Connection *conn;
    const char *idem_key; /* the Idempotency-Key header (borrowed from libmicrohttpd) */
    char idem_route[512]; /* "POST /api/v1/..." */
    char idem_hash[LT_SHA256_HEX];
    int idem_state; /* API_IDEM_* */
};

/* ---- gate.c: the connection gate (first request head of each connection, before libmicrohttpd) ---- */

#define API_GATE_URI_MAX 8192 /* request target bytes: more is a 414 */
#define API_GATE_URI_MAX_TEXT "8192"
#define API_GATE_HEAD_MAX 16384 /* header section bytes: more is a 431 */
#define API_GATE_HEAD_MAX_TEXT "16384"

enum { API_GATE_PASS = 0, API_GATE_MORE = 1 };

typedef struct api_gate_verdict {
    int status; /* 400, 408, 413, 414, 431, 505 */
    char detail[200];
} api_gate_verdict;

/* Checks the first n bytes a client sent (a request head, maybe with the start of a body). complete: the
 * client will send no more. Returns API_GATE_PASS (a well-formed HTTP/1.0 or 1.1 head with unambiguous
 * framing), API_GATE_MORE (incomplete, wait for more bytes), or an HTTP status with v->detail saying what to
 * fix. */
int api_gate_inspect(const char *buf, size_t n, int complete, api_gate_verdict *v);

struct MHD_Daemon;
typedef struct api_gate api_gate;
/* Starts the gate thread on a listening socket (non-blocking, owned by the caller), handing accepted
 * connections whose head passed to mhd (started with MHD_USE_NO_LISTEN_SOCKET). NULL with err. */
api_gate *api_gate_start(int listen_fd, struct MHD_Daemon *mhd, lt_err *err);
/* Stops the thread and closes the connections still waiting at the gate (not the listening socket). */
void api_gate_stop(api_gate *g);

/* ---- auth.c ---- */

/* Reads X-API-Key or Authorization: Bearer, verifies the key, fills req->principal. 0 ok, -1 with the 401
 * (or store error) written into resp. */
int api_authenticate(api_req *req, api_resp *resp);
/* Notes the request's Idempotency-Key when the route is idempotent (the record is looked up later, by
 * api_authorize / api_authorize_admin once the route's authorization passed). 0, or -1 with a 400 in resp
 * (key longer than 255 characters). */
int api_idem_prepare(api_req *req, api_resp *resp, int idempotent, const char *method, const char *path,
                     const char *body, size_t body_len);
/* After the handler: stores a 2xx in-memory answer under the reserved key, or drops the reservation. */
void api_idem_settle(api_req *req, const api_resp *resp);

/* ---- ratelimit.c: token buckets per API key ---- */

typedef struct api_ratelimit api_ratelimit;
api_ratelimit *api_ratelimit_new(double rate_per_s, double burst); /* rate 0 = off (take always allows) */
void api_ratelimit_free(api_ratelimit *rl);
/* Takes one token for key at time now_s (monotonic seconds). 1 allowed; 0 refused with *retry_after_s (>= 1)
 * set to the whole seconds until a token is available. */
int api_ratelimit_take(api_ratelimit *rl, const char *key, double now_s, int *retry_after_s);

/* ---- metrics.c ---- */

/* Counts one finished request: method, route pattern ("unmatched" when none matched), status, duration. */
void api_metrics_observe(const char *method, const char *route, int status, double seconds);
/* Writes the Prometheus text: built-in request metrics, then every registered collector. */
void api_metrics_render(api_ctx *ctx, strbuf *out);

#endif
