/* libFuzzer target for train/rows: the JSONL / JSON / CSV readers (the first byte picks one), and for every
 * row the shape check, the conversation and the RL prompts, with a capability prompt and a task template.
 * The same bytes then go through the streaming reader in chunks of 1..8 bytes (the second byte picks the
 * size) under small row and column limits, so buffer boundaries and limit paths are explored too; when the
 * limits are not hit, both readers must agree on the row count. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/rows.h"

static int per_row(const json_t *row, long line, void *ud, lt_err *err) {
    (void)line;
    if (ud) (*(size_t *)ud)++;
    if (rows_classify(row, err) == ROW_SHAPE_NONE) return 0;
    json_t *c = rows_conversation(row, "Be brief.", err);
    json_decref(c);
    json_t *rl = rows_rl_items(row, "Be brief.", "Solve {{x}} on {{ host }}.", err);
    json_decref(rl);
    return 0;
}

typedef struct chunks {
    const uint8_t *p;
    size_t n, pos, step;
} chunks;

static long read_chunks(void *ud, char *buf, size_t n, lt_err *err) {
    (void)err;
    chunks *c = ud;
    size_t k = c->n - c->pos;
    if (k > n) k = n;
    if (k > c->step) k = c->step;
    memcpy(buf, c->p + c->pos, k);
    c->pos += k;
    return (long)k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    rows_format fmt = (rows_format)(data[0] % 3);
    size_t step = 1 + data[1] % 8;
    rows_loc loc;
    lt_err err;
    size_t n_mem = 0, n_stream = 0;
    int a = rows_parse((const char *)data + 2, size - 2, fmt, "train", "fuzz", per_row, &n_mem, &loc, &err);
    rows_limits lim = {256, 16};
    chunks ch = {data + 2, size - 2, 0, step};
    int b = rows_parse_stream(read_chunks, &ch, fmt, &lim, "train", "fuzz", per_row, &n_stream, &loc, &err);
    if (b == 0 && a != 0) abort(); /* the stream reader is never more lenient */
    if (a == 0 && b == 0 && n_mem != n_stream) abort();
    return 0;
}
