/* libFuzzer target for train/rows: the JSONL / JSON / CSV readers (the first byte picks one), and for every
 * row the shape check, the conversation and the RL prompts, with a capability prompt and a task template. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "train/rows.h"

static int per_row(const json_t *row, long line, void *ud, lt_err *err) {
    (void)line;
    (void)ud;
    if (rows_classify(row, err) == ROW_SHAPE_NONE) return 0;
    json_t *c = rows_conversation(row, "Be brief.", err);
    json_decref(c);
    json_t *rl = rows_rl_items(row, "Be brief.", "Solve {{x}} on {{ host }}.", err);
    json_decref(rl);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    rows_format fmt = (rows_format)(data[0] % 3);
    rows_loc loc;
    lt_err err;
    rows_parse((const char *)data + 1, size - 1, fmt, "train", "fuzz", per_row, NULL, &loc, &err);
    return 0;
}
