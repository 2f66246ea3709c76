/* errors.c: building responses: JSON bodies, the error envelope of docs/spec.md §2.1, validation errors, raw
 * bodies, file downloads, headers.
 *
 * A response is a small struct (http_internal.h) that the handler fills and the server sends. Setting a
 * response twice replaces the first one (its memory is freed), so an error path may simply call api_error
 * whatever was prepared before. Every non-2xx body goes through envelope(): {"code", "detail", "type"} plus
 * "errors" when there are any, and nothing else, so clients can rely on one shape.
 *
 * JSON bodies print reals with 15 significant digits (JSON_REAL_PRECISION(15)) instead of jansson's default
 * 17: every decimal with up to 15 significant digits survives the trip through a double unchanged, so a
 * learning rate sent as 0.00014 comes back as 0.00014, not 0.00013999999999999999. */
#include <assert.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/http_internal.h"
#include "util/log.h"
#include "util/util.h"

static size_t errors_take_omitted(json_t *errors);

#define API_JSON_FLAGS (JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

void api_resp_clear(api_resp *r, int keep_headers) {
    free(r->content_type);
    free(r->body);
    if (r->kind == RESP_FILE && r->fd >= 0) close(r->fd);
    if (r->kind == RESP_STREAM && r->stream_free) r->stream_free(r->stream_arg);
    r->content_type = NULL;
    r->body = NULL;
    r->body_len = 0;
    r->fd = -1;
    r->fd_size = 0;
    r->stream_fn = NULL;
    r->stream_tick = NULL;
    r->stream_arg = NULL;
    r->stream_free = NULL;
    r->kind = RESP_NONE;
    r->status = 0;
    if (!keep_headers) {
        for (int i = 0; i < r->nheaders; i++) {
            free(r->hname[i]);
            free(r->hval[i]);
        }
        r->nheaders = 0;
    }
}

void api_resp_set_header(api_resp *r, const char *name, const char *value) {
    for (int i = 0; i < r->nheaders; i++) {
        if (!strcasecmp(r->hname[i], name)) {
            free(r->hval[i]);
            r->hval[i] = lt_strdup(value);
            return;
        }
    }
    if (r->nheaders == API_RESP_MAX_HEADERS) {
        lt_log(LOG_ERROR, "response header table full; dropping %s", name);
        return;
    }
    r->hname[r->nheaders] = lt_strdup(name);
    r->hval[r->nheaders] = lt_strdup(value);
    r->nheaders++;
}

void api_header_add(api_resp *resp, const char *name, const char *value) {
    api_resp_set_header(resp, name, value);
}

int api_resp_status(const api_resp *resp) {
    return resp->status;
}

static void set_mem(api_resp *r, int status, const char *ctype, char *body, size_t n) {
    api_resp_clear(r, 1);
    r->status = status;
    r->kind = RESP_MEM;
    r->content_type = lt_strdup(ctype);
    r->body = body;
    r->body_len = n;
}

void api_json(api_resp *resp, int status, json_t *body) {
    if (!body) body = json_object();
    char *text = json_dumps(body, API_JSON_FLAGS);
    json_decref(body);
    if (!text) {
        api_error(resp, 500, "internal_error", "internal error (request %s): response not serializable",
                  resp->request_id ? resp->request_id : "-");
        return;
    }
    set_mem(resp, status, "application/json; charset=utf-8", text, strlen(text));
}

void api_no_content(api_resp *resp) {
    set_mem(resp, 204, "application/json; charset=utf-8", NULL, 0);
}

static void envelope(api_resp *resp, int status, const char *type, json_t *errors, const char *detail) {
    json_t *o = json_object();
    json_object_set_new(o, "code", json_integer(status));
    json_object_set_new(o, "detail", json_string(detail));
    json_object_set_new(o, "type", json_string(type));
    if (errors) json_object_set_new(o, "errors", errors);
    char *text = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!text) text = lt_strdup("{\"code\":500,\"detail\":\"internal error\",\"type\":\"internal_error\"}");
    set_mem(resp, status, "application/json; charset=utf-8", text, strlen(text));
}

/* Detail strings go into JSON: keep them valid UTF-8 whatever a message interpolated. */
static void detail_fmt(char *buf, size_t cap, const char *fmt, va_list ap) {
    vsnprintf(buf, cap, fmt, ap);
    if (!lt_utf8_valid(buf, strlen(buf)))
        for (char *p = buf; *p; p++)
            if ((unsigned char)*p >= 0x80) *p = '?';
}

void api_error(api_resp *resp, int status, const char *type, const char *fmt, ...) {
    char detail[1200];
    va_list ap;
    va_start(ap, fmt);
    detail_fmt(detail, sizeof detail, fmt, ap);
    va_end(ap);
    envelope(resp, status, type, NULL, detail);
}

void api_error_with(api_resp *resp, int status, const char *type, json_t *errors, const char *fmt, ...) {
    char detail[1200];
    va_list ap;
    va_start(ap, fmt);
    detail_fmt(detail, sizeof detail, fmt, ap);
    va_end(ap);
    size_t omitted = errors_take_omitted(errors);
    if (omitted) {
        size_t len = strlen(detail);
        snprintf(detail + len, sizeof detail - len, " (%zu more errors not listed)", omitted);
    }
    envelope(resp, status, type, errors, detail);
}

void api_error_from(api_resp *resp, const lt_err *err) {
    int code = err && err->code ? err->code : 500;
    const char *msg = err && err->msg[0] ? err->msg : "error";
    switch (code) {
    case 400:
        api_error(resp, 400, "bad_request", "%s", msg);
        return;
    case 401:
        api_error(resp, 401, "authentication_error", "Authentication failed");
        return;
    case 403:
        api_error(resp, 403, "permission_denied", "%s", msg);
        return;
    case 404:
        api_error(resp, 404, "not_found", "%s", msg);
        return;
    case 409:
        api_error(resp, 409, "conflict", "%s", msg);
        return;
    case 413:
        api_error(resp, 413, "payload_too_large", "%s", msg);
        return;
    case 422:
        api_error(resp, 422, "validation_error", "%s", msg);
        return;
    case 503: /* the store is down or stayed busy (db.h): the client retries later */
        lt_log(LOG_WARN, "store unavailable: %s", msg);
        api_header_add(resp, "Retry-After", "2");
        api_error(resp, 503, "service_unavailable", "the store is unavailable; retry shortly (request %s)",
                  resp->request_id ? resp->request_id : "-");
        return;
    case 502:
        lt_log(LOG_WARN, "backend unavailable: %s", msg);
        api_error(resp, 502, "bad_gateway", "the store did not answer correctly; try again (request %s)",
                  resp->request_id ? resp->request_id : "-");
        return;
    case 504:
        api_error(resp, 504, "gateway_timeout", "%s", msg);
        return;
    default:
        lt_log(LOG_ERROR, "internal error: %s", msg);
        api_error(resp, 500, "internal_error", "internal error (request %s)",
                  resp->request_id ? resp->request_id : "-");
        return;
    }
}

void api_raw(api_resp *resp, int status, const char *content_type, const void *data, size_t n) {
    char *copy = malloc(n + 1);
    if (!copy) abort();
    if (n) memcpy(copy, data, n);
    copy[n] = '\0';
    set_mem(resp, status, content_type ? content_type : "application/octet-stream", copy, n);
}

int api_file(api_resp *resp, int status, const char *content_type, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        lt_log(LOG_WARN, "download of missing file %s", path);
        api_error(resp, 404, "not_found", "the requested file is not available");
        return -1;
    }
    api_resp_clear(resp, 1);
    resp->status = status;
    resp->kind = RESP_FILE;
    resp->content_type = lt_strdup(content_type ? content_type : "application/octet-stream");
    resp->fd = fd;
    resp->fd_size = (uint64_t)st.st_size;
    return 0;
}

/* ---- validation errors ---- */

json_t *api_loc(const char *first, ...) {
    json_t *loc = json_array();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        json_array_append_new(loc, json_string(s));
    va_end(ap);
    return loc;
}

/* Past API_ERRORS_MAX items, api_verr_add only counts: the count lives in a last, private item
 * {"_omitted": N} that the envelope functions take out again (errors_take_omitted) before anything is sent,
 * so a body with 50,000 unknown keys costs 100 items, not 50,000. */
#define OMITTED_KEY "_omitted"

static json_int_t omitted_of(const json_t *item) {
    return json_integer_value(json_object_get(item, OMITTED_KEY));
}

/* Removes the count item and anything past the cap; returns how many errors were left out. */
static size_t errors_take_omitted(json_t *errors) {
    if (!json_is_array(errors)) return 0;
    size_t n = json_array_size(errors), omitted = 0;
    if (n && omitted_of(json_array_get(errors, n - 1)) > 0) {
        omitted = (size_t)omitted_of(json_array_get(errors, n - 1));
        json_array_remove(errors, --n);
    }
    while (n > API_ERRORS_MAX) {
        json_array_remove(errors, --n);
        omitted++;
    }
    return omitted;
}

void api_verr_add(json_t *errors, json_t *loc, const char *type, const char *fmt, ...) {
    assert(json_is_array(errors));
    size_t have = json_array_size(errors);
    if (have >= API_ERRORS_MAX) {
        json_decref(loc);
        json_t *last = json_array_get(errors, have - 1);
        json_int_t k = omitted_of(last);
        if (k > 0)
            json_object_set_new(last, OMITTED_KEY, json_integer(k + 1));
        else
            json_array_append_new(errors, json_pack("{s:I}", OMITTED_KEY, (json_int_t)1));
        return;
    }
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    detail_fmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_object();
    json_object_set_new(e, "loc", loc ? loc : json_array());
    json_object_set_new(e, "msg", json_string(msg));
    json_object_set_new(e, "type", json_string(type));
    json_array_append_new(errors, e);
}

/* "config.batch_size" from ["body","config","batch_size"]; array indexes as "[i]". */
static void loc_text(const json_t *loc, strbuf *sb) {
    size_t i;
    json_t *v;
    json_array_foreach(loc, i, v) {
        if (i == 0 && json_is_string(v) && !strcmp(json_string_value(v), "body")) continue;
        if (json_is_integer(v)) {
            sb_printf(sb, "[%lld]", (long long)json_integer_value(v));
            continue;
        }
        if (sb->len) sb_putc(sb, '.');
        sb_puts(sb, json_is_string(v) ? json_string_value(v) : "?");
    }
}

void api_validation_error(api_resp *resp, json_t *errors) {
    size_t omitted = errors_take_omitted(errors);
    size_t n = json_array_size(errors) + omitted;
    if (n == 0) {
        json_decref(errors);
        api_error(resp, 422, "validation_error", "the request body is invalid");
        return;
    }
    json_t *first = json_array_get(errors, 0);
    strbuf sb = STRBUF_INIT;
    loc_text(json_object_get(first, "loc"), &sb);
    const char *msg = json_string_value(json_object_get(first, "msg"));
    if (sb.len) sb_putc(&sb, ' ');
    sb_puts(&sb, msg ? msg : "is invalid");
    if (sb.len > 600) { /* a huge key name must not push the count out of the detail */
        sb.len = 600;
        sb.buf[sb.len] = '\0';
        sb_puts(&sb, "...");
    }
    if (n > 1) sb_printf(&sb, " (and %zu more error%s", n - 1, n > 2 ? "s" : "");
    if (omitted) sb_printf(&sb, "; the first %zu are listed", n - omitted);
    if (n > 1) sb_putc(&sb, ')');
    api_error_with(resp, 422, "validation_error", errors, "%s", sb.buf);
    sb_free(&sb);
}

int api_verr_extra_fields(json_t *errors, const json_t *obj, const char *const *allowed,
                          const json_t *prefix) {
    if (!json_is_object(obj)) return 0;
    int added = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, k)) {
                ok = 1;
                break;
            }
        if (ok) continue;
        json_t *loc = prefix ? json_deep_copy(prefix) : json_array();
        json_array_append_new(loc, json_string(k));
        api_verr_add(errors, loc, "extra_forbidden", "extra fields not permitted");
        added++;
    }
    return added;
}
