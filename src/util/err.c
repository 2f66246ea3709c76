/* err.c: formatting helpers for lt_err, and the allocators that abort on out of memory (see err.h). */
#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lt_err_set(lt_err *err, int code, const char *fmt, ...) {
    if (!err) return -1;
    err->code = code ? code : 500;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

void lt_err_prefix(lt_err *err, const char *fmt, ...) {
    if (!err) return;
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof err->msg) {
        size_t room = sizeof err->msg - (size_t)n;
        size_t ol = strnlen(old, sizeof old - 1);
        if (ol >= room) ol = room - 1;
        memcpy(err->msg + n, old, ol);
        err->msg[(size_t)n + ol] = '\0';
    }
}

static void out_of_memory(size_t n) {
    fprintf(stderr, "lathe: out of memory (%zu bytes)\n", n);
    abort();
}

void *lt_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *lt_xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *lt_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}
