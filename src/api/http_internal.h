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
    api_stream_fn stream_fn; /* RESP_STREAM */
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
