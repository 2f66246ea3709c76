/* fuzz_sse.c: the CLI's event-stream parser on arbitrary bytes.
 *
 * The input is fed twice: at once, and split at a point taken from the first byte. Both runs must yield the
 * same events (the parser may not depend on how the network chunks the stream), every event's data must have
 * the length reported, and nothing may leak or crash. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

typedef struct acc {
    strbuf log;
} acc;

static int on_event(void *ud, const char *event, const char *data, size_t len, const char *id) {
    acc *a = ud;
    if (strlen(data) > len) abort(); /* data may hold NULs, but never run past len */
    sb_printf(&a->log, "%zu:%s:%zu:%s\n", strlen(event), event, len, id);
    sb_append(&a->log, data, len);
    return 0;
}

static char *run(const uint8_t *d, size_t n, size_t split, size_t *out_len) {
    acc a = {STRBUF_INIT};
    lc_sse p;
    lc_sse_init(&p, on_event, &a);
    lt_err err = {0};
    int rc = lc_sse_feed(&p, (const char *)d, split, &err);
    if (rc == 0) rc = lc_sse_feed(&p, (const char *)d + split, n - split, &err);
    lc_sse_free(&p);
    sb_printf(&a.log, "rc=%d", rc);
    *out_len = a.log.len;
    return sb_steal(&a.log);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t split = size > 1 ? data[0] % size : 0;
    size_t l1, l2;
    char *a = run(data, size, 0, &l1);
    char *b = run(data, size, split, &l2);
    if (l1 != l2 || memcmp(a, b, l1) != 0) abort();
    free(a);
    free(b);
    return 0;
}
