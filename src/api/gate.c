/* gate.c: the connection gate in front of libmicrohttpd: every new connection's first request head is
 * checked here before libmicrohttpd sees a byte of it.
 *
 * Why. libmicrohttpd answers the requests it cannot parse by itself, with fixed HTML pages and no hook to
 * change them (0.9.75 as Debian 12 ships it, and 1.0 alike): a request line too long (414), headers too
 * large (431), a malformed Content-Length (400), an HTTP/2 preface or unknown version (505). Clients of
 * lathe rely on one error shape (docs/spec.md §2.1), and a head that two parties could frame differently (two
 * Content-Length headers, Content-Length beside Transfer-Encoding) must never be served: request smuggling
 * behind a proxy. So the server owns the listening socket; a single gate thread accepts, peeks at the
 * request head (MSG_PEEK: nothing is consumed), and either hands the socket to libmicrohttpd
 * (MHD_add_connection) or answers the envelope itself and closes. libmicrohttpd's own limits are set above
 * the gate's (server.c: connection memory), so a head that passed is never refused there.
 *
 * What the gate does not see: later requests on a kept-alive connection (libmicrohttpd parses those; the
 * access handler repeats the header checks that need no parsing of framing: server.c strict_head) and
 * chunk-size lines beyond the peeked bytes. The first request of each connection, where a scanner or an
 * attacker starts, is always checked.
 *
 * Slow clients: a head must be complete within GATE_HEAD_TIMEOUT_S (else 408) and at most GATE_PENDING_MAX
 * connections wait at the gate at once (more are closed at once). Peeking copies the whole head each time,
 * so a head that trickles in is inspected at once only GATE_EAGER times, then when its size has doubled or
 * at the next GATE_TICK_MS tick: a few full inspections per connection, never one per byte. After an error
 * answer the gate reads and drops what the client still sends for up to GATE_LINGER_S before closing, so the
 * client reads the answer instead of a reset. */
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/http_internal.h"
#include "util/log.h"
#include "util/util.h"

#define GATE_HEAD_TIMEOUT_S 30.0
#define GATE_LINGER_S 2.0
#define GATE_PENDING_MAX 4096
#define GATE_EAGER 8     /* inspections of a head made as soon as bytes arrive, before the tick takes over */
#define GATE_TICK_MS 100 /* timeouts, and heads that arrived in pieces, are looked at this often */

/* ================================================================================================== */
/* the head inspector (pure: fuzzed by tests/fuzz/fuzz_http_headers.c)                                */

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int verdict(api_gate_verdict *v, int status, const char *fmt, const char *arg) {
    v->status = status;
    snprintf(v->detail, sizeof v->detail, fmt, arg ? arg : "");
    return status;
}

/* Finds the end of the line starting at p (the '\n'), or NULL. */
static const char *line_end(const char *p, const char *end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl;
}

/* Checks a hex chunk-size line "HEX[;ext]\r\n" when it is all in the buffer. */
static int check_chunk_line(const char *p, const char *end, api_gate_verdict *v) {
    const char *nl = line_end(p, end);
    if (!nl) {
        size_t n = (size_t)(end - p);
        size_t digits = 0;
        while (digits < n && strchr("0123456789abcdefABCDEF", p[digits]) && p[digits])
            digits++;
        if (digits < n && p[digits] != ';' && p[digits] != '\r' && p[digits] != ' ' && p[digits] != '\t')
            return verdict(v, 400, "the chunk size is not a hexadecimal number%s", NULL);
        if (digits > 16) return verdict(v, 413, "the chunk size is larger than 2^64 bytes%s", NULL);
        return 0;
    }
    size_t digits = 0;
    while (p + digits < nl && p[digits] && strchr("0123456789abcdefABCDEF", p[digits]))
        digits++;
    const char *q = p + digits;
    if (digits == 0 || (q < nl && *q != ';' && *q != '\r' && *q != ' ' && *q != '\t'))
        return verdict(v, 400, "the chunk size is not a hexadecimal number%s", NULL);
    if (digits > 16) return verdict(v, 413, "the chunk size is larger than 2^64 bytes%s", NULL);
    return 0;
}

int api_gate_inspect(const char *buf, size_t n, int complete, api_gate_verdict *v) {
    const char *p = buf, *end = buf + n;
    memset(v, 0, sizeof *v);
    while (p < end && (*p == '\r' || *p == '\n')) /* empty lines before a request are allowed */
        p++;
    if (p == end) return complete ? verdict(v, 400, "the request is empty%s", NULL) : API_GATE_MORE;
    /* The method: a token, then one space. Non-token bytes first (TLS, binary) are refused at once. */
    const char *m = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == end)
        return (size_t)(p - m) > 32 ? verdict(v, 400, "the request method is not a valid token%s", NULL)
               : complete           ? verdict(v, 400, "the request line is incomplete%s", NULL)
                                    : API_GATE_MORE;
    if (p == m || *p != ' ' || (size_t)(p - m) > 32)
        return verdict(v, 400, "the request line is not METHOD SP TARGET SP HTTP/1.x%s", NULL);
    const char *target = ++p;
    while (p < end && *p != ' ' && *p != '\r' && *p != '\n')
        p++;
    if ((size_t)(p - target) > API_GATE_URI_MAX)
        return verdict(v, 414, "the request target is longer than %s bytes", API_GATE_URI_MAX_TEXT);
    if (p == end) return complete ? verdict(v, 400, "the request line is incomplete%s", NULL) : API_GATE_MORE;
    if (p == target || *p != ' ')
        return verdict(v, 400, "the request line is not METHOD SP TARGET SP HTTP/1.x%s", NULL);
    for (const char *t = target; t < p; t++)
        if ((unsigned char)*t < 0x21 || (unsigned char)*t == 0x7f)
            return verdict(v, 400, "the request target contains a control character%s", NULL);
    const char *ver = ++p;
    const char *nl = line_end(p, end);
    if (!nl) {
        if ((size_t)(end - ver) > 16)
            return verdict(v, 400, "the request line does not end with HTTP/1.0 or HTTP/1.1%s", NULL);
        return complete ? verdict(v, 400, "the request line is incomplete%s", NULL) : API_GATE_MORE;
    }
    size_t vlen = (size_t)(nl - ver);
    if (vlen && ver[vlen - 1] == '\r') vlen--;
    int http11 = 0;
    if (vlen == 8 && !memcmp(ver, "HTTP/1.1", 8))
        http11 = 1;
    else if (vlen == 8 && !memcmp(ver, "HTTP/1.0", 8))
        http11 = 0;
    else if (vlen >= 5 && !memcmp(ver, "HTTP/", 5))
        return verdict(v, 505, "HTTP version not supported: this server speaks HTTP/1.0 and HTTP/1.1%s",
                       NULL);
    else
        return verdict(v, 400, "the request line does not end with HTTP/1.0 or HTTP/1.1%s", NULL);
    /* The header fields, up to the empty line. */
    p = nl + 1;
    const char *heads = p;
    int host = 0, cl = 0, te = 0, chunked = 0;
    for (;;) {
        nl = line_end(p, end);
        if (!nl) {
            if ((size_t)(end - heads) >= API_GATE_HEAD_MAX)
                return verdict(v, 431, "the request header fields are larger than %s bytes in all",
                               API_GATE_HEAD_MAX_TEXT);
            return complete ? verdict(v, 400, "the request headers are incomplete%s", NULL) : API_GATE_MORE;
        }
        if ((size_t)(nl + 1 - heads) > API_GATE_HEAD_MAX)
            return verdict(v, 431, "the request header fields are larger than %s bytes in all",
                           API_GATE_HEAD_MAX_TEXT);
        size_t len = (size_t)(nl - p);
        if (len && p[len - 1] == '\r') len--;
        if (len == 0) {
            p = nl + 1;
            break;
        }
        if (*p == ' ' || *p == '\t')
            return verdict(v, 400, "a header line starts with whitespace (obsolete line folding)%s", NULL);
        const char *colon = memchr(p, ':', len);
        if (!colon || colon == p) return verdict(v, 400, "a header line is not NAME: VALUE%s", NULL);
        for (const char *c = p; c < colon; c++)
            if (!is_tchar((unsigned char)*c))
                return verdict(v, 400, "a header name contains a character that is not allowed%s", NULL);
        const char *val = colon + 1, *vend = p + len;
        for (const char *c = val; c < vend; c++)
            if (((unsigned char)*c < 0x20 && *c != '\t') || (unsigned char)*c == 0x7f)
                return verdict(v, 400, "a header value contains a control character%s", NULL);
        while (val < vend && (*val == ' ' || *val == '\t'))
            val++;
        while (vend > val && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        size_t nlen = (size_t)(colon - p), vl = (size_t)(vend - val);
        if (nlen == 4 && !strncasecmp(p, "Host", 4)) host++;
        if (nlen == 14 && !strncasecmp(p, "Content-Length", 14)) {
            cl++;
            if (vl == 0 || vl > 19)
                return verdict(v, 400, "the Content-Length header is not a decimal number of bytes%s", NULL);
            for (size_t i = 0; i < vl; i++)
                if (val[i] < '0' || val[i] > '9')
                    return verdict(v, 400, "the Content-Length header is not a decimal number of bytes%s",
                                   NULL);
        }
        if (nlen == 17 && !strncasecmp(p, "Transfer-Encoding", 17)) {
            te++;
            if (vl == 7 && !strncasecmp(val, "chunked", 7))
                chunked = 1;
            else
                return verdict(v, 400, "Transfer-Encoding must be exactly 'chunked'%s", NULL);
        }
        p = nl + 1;
    }
    if (cl > 1)
        return verdict(v, 400, "the request has more than one Content-Length header; send exactly one%s",
                       NULL);
    if (te > 1)
        return verdict(v, 400, "the request has more than one Transfer-Encoding header; send exactly one%s",
                       NULL);
    if (cl && te)
        return verdict(v, 400,
                       "the request has both Content-Length and Transfer-Encoding; send only one of them%s",
                       NULL);
    if (http11 && host != 1)
        return verdict(v, 400,
                       host ? "the request has more than one Host header; send exactly one%s"
                            : "an HTTP/1.1 request needs a Host header%s",
                       NULL);
    if (chunked && p < end) {
        int r = check_chunk_line(p, end, v);
        if (r) return r;
    }
    return API_GATE_PASS;
}

/* ================================================================================================== */
/* the gate thread                                                                                    */

enum { GC_HEAD = 0, GC_LINGER };

typedef struct gate_conn {
    int fd;
    int state;
    int hup;          /* the client has sent all it will */
    int dirty;        /* bytes arrived since the last inspection */
    size_t inspected; /* bytes seen by the last inspection (0 = none yet) */
    int inspections;  /* how many so far */
    double deadline;
    struct sockaddr_storage addr;
    socklen_t alen;
    struct gate_conn *next, *prev;
} gate_conn;

struct api_gate {
    int listen_fd, ep, wake_fd;
    struct MHD_Daemon *mhd;
    pthread_t tid;
    int started;
    gate_conn *conns;
    int npending;
    char *peek; /* API_GATE_HEAD_MAX + API_GATE_URI_MAX + 1024 bytes */
    double next_tick;
    size_t peek_cap;
};

static void gc_unlink(api_gate *g, gate_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g->npending--;
}

static void gc_close(api_gate *g, gate_conn *c) {
    epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    gc_unlink(g, c);
    free(c);
}

/* Answers the envelope, half-closes, and lingers reading what the client still sends. */
static void gc_refuse(api_gate *g, gate_conn *c, const api_gate_verdict *v) {
    char rid[LT_UUID_LEN];
    lt_uuid4(rid);
    json_t *o = json_pack("{s:i,s:s,s:s}", "code", v->status, "detail", v->detail, "type",
                          v->status == 413 ? "payload_too_large" : "bad_request");
    char *body = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    const char *reason = v->status == 408   ? "Request Timeout"
                         : v->status == 413 ? "Content Too Large"
                         : v->status == 414 ? "URI Too Long"
                         : v->status == 431 ? "Request Header Fields Too Large"
                         : v->status == 505 ? "HTTP Version Not Supported"
                                            : "Bad Request";
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
                      "%zu\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n",
                      v->status, reason, body ? strlen(body) : 0, rid);
    /* Drop what was peeked, so that closing later is not a reset that eats the answer. */
    char sink[4096];
    while (recv(c->fd, sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;
    if (send(c->fd, head, (size_t)hn, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ||
        (body && send(c->fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT) < 0))
        lt_log(LOG_DEBUG, "gate: cannot send the %d answer: %s", v->status, strerror(errno));
    free(body);
    shutdown(c->fd, SHUT_WR);
    lt_log(LOG_INFO, "http: refused at the gate: %d %s (request %s)", v->status, v->detail, rid);
    api_metrics_observe("-", "gate", v->status, 0);
    c->state = GC_LINGER;
    c->deadline = lt_mono_s() + GATE_LINGER_S;
}

static void gc_readable(api_gate *g, gate_conn *c, int hup, int tick) {
    if (c->state == GC_LINGER) {
        char sink[4096];
        ssize_t k;
        while ((k = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT)) > 0)
            ;
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) gc_close(g, c);
        return;
    }
    c->hup |= hup;
    /* A head that trickles in byte by byte must not cost a peek and a parse of everything per byte
     * (quadratic): after GATE_EAGER inspections, inspect at once only twice as many bytes as last time, or
     * the end; otherwise note it and let the next tick (GATE_TICK_MS) inspect. */
    int avail = 0;
    if (!tick && c->inspections >= GATE_EAGER && !c->hup && ioctl(c->fd, FIONREAD, &avail) == 0 &&
        (size_t)avail < 2 * c->inspected && (size_t)avail < g->peek_cap) {
        c->dirty = 1;
        return;
    }
    c->dirty = 0;
    ssize_t k = recv(c->fd, g->peek, g->peek_cap, MSG_PEEK | MSG_DONTWAIT);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (k <= 0) { /* closed before a request, or an error: nothing to answer */
        gc_close(g, c);
        return;
    }
    c->inspected = (size_t)k;
    c->inspections++;
    api_gate_verdict v;
    int r = api_gate_inspect(g->peek, (size_t)k, c->hup, &v);
    if (r == API_GATE_MORE) {
        if ((size_t)k >= g->peek_cap) { /* cannot happen: the limits are below the peek size */
            verdict(&v, 431, "the request header fields are larger than %s bytes in all",
                    API_GATE_HEAD_MAX_TEXT);
            gc_refuse(g, c, &v);
        }
        return; /* edge-triggered: we hear of the next bytes */
    }
    if (r == API_GATE_PASS) {
        int fd = c->fd;
        struct sockaddr_storage addr = c->addr;
        socklen_t alen = c->alen;
        epoll_ctl(g->ep, EPOLL_CTL_DEL, fd, NULL);
        gc_unlink(g, c);
        free(c);
        if (MHD_add_connection(g->mhd, fd, (struct sockaddr *)&addr, alen) != MHD_YES)
            lt_log(LOG_WARN, "http: the server is at its connection limit; a connection was dropped");
        return;
    }
    gc_refuse(g, c, &v);
}

static void gc_accept(api_gate *g) {
    for (;;) {
        gate_conn tmp;
        memset(&tmp, 0, sizeof tmp);
        tmp.alen = sizeof tmp.addr;
        int fd = accept4(g->listen_fd, (struct sockaddr *)&tmp.addr, &tmp.alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                lt_log(LOG_WARN, "http: accept failed: %s", strerror(errno));
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        if (g->npending >= GATE_PENDING_MAX) {
            lt_log(LOG_WARN, "http: %d connections wait for their first request; dropping a new one",
                   g->npending);
            close(fd);
            continue;
        }
        gate_conn *c = malloc(sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        *c = tmp;
        c->fd = fd;
        c->state = GC_HEAD;
        c->deadline = lt_mono_s() + GATE_HEAD_TIMEOUT_S;
        c->prev = NULL;
        c->next = g->conns;
        if (g->conns) g->conns->prev = c;
        g->conns = c;
        g->npending++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            gc_close(g, c);
            continue;
        }
        gc_readable(g, c, 0, 0); /* the head may already be there */
    }
}

static void gc_expire(api_gate *g) {
    double now = lt_mono_s();
    if (now < g->next_tick) return;
    g->next_tick = now + GATE_TICK_MS / 1000.0;
    for (gate_conn *c = g->conns, *n; c; c = n) {
        n = c->next;
        if (c->state == GC_HEAD && c->dirty) {
            gc_readable(g, c, 0, 1); /* may pass, refuse or free c */
            continue;
        }
        if (now < c->deadline) continue;
        if (c->state == GC_LINGER) {
            gc_close(g, c);
        } else {
            api_gate_verdict v;
            verdict(&v, 408, "the request head did not arrive within 30 s%s", NULL);
            gc_refuse(g, c, &v);
        }
    }
}

static void *gate_main(void *arg) {
    api_gate *g = arg;
    lt_log_set_context("http-gate");
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(g->ep, evs, 64, GATE_TICK_MS);
        if (n < 0 && errno != EINTR) {
            lt_log(LOG_ERROR, "http gate: epoll_wait failed: %s", strerror(errno));
            break;
        }
        int stop = 0;
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &g->wake_fd)
                stop = 1;
            else if (p == &g->listen_fd)
                gc_accept(g);
            else
                gc_readable(g, p, (evs[i].events & (EPOLLRDHUP | EPOLLHUP)) != 0, 0);
        }
        if (stop) break;
        gc_expire(g);
    }
    lt_log_set_context(NULL);
    return NULL;
}

api_gate *api_gate_start(int listen_fd, struct MHD_Daemon *mhd, lt_err *err) {
    api_gate *g = calloc(1, sizeof *g);
    if (!g) {
        lt_err_set(err, 500, "out of memory starting the connection gate");
        return NULL;
    }
    g->listen_fd = listen_fd;
    g->mhd = mhd;
    g->ep = g->wake_fd = -1;
    g->peek_cap = API_GATE_HEAD_MAX + API_GATE_URI_MAX + 1024;
    g->peek = malloc(g->peek_cap);
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g->listen_fd};
    struct epoll_event wv = {.events = EPOLLIN, .data.ptr = &g->wake_fd};
    if (!g->peek || g->ep < 0 || g->wake_fd < 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, listen_fd, &ev) != 0 ||
        epoll_ctl(g->ep, EPOLL_CTL_ADD, g->wake_fd, &wv) != 0 ||
        pthread_create(&g->tid, NULL, gate_main, g) != 0) {
        lt_err_set(err, 500, "cannot start the connection gate: %s", strerror(errno));
        api_gate_stop(g);
        return NULL;
    }
    g->started = 1;
    return g;
}

void api_gate_stop(api_gate *g) {
    if (!g) return;
    if (g->started) {
        uint64_t one = 1;
        if (write(g->wake_fd, &one, sizeof one) < 0)
            lt_log(LOG_WARN, "gate: cannot wake: %s", strerror(errno));
        pthread_join(g->tid, NULL);
    }
    while (g->conns)
        gc_close(g, g->conns);
    if (g->ep >= 0) close(g->ep);
    if (g->wake_fd >= 0) close(g->wake_fd);
    free(g->peek);
    free(g);
}
