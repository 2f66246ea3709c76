/* libFuzzer target for util/archive: arbitrary bytes through the safe tar/tar.gz reader and the manifest
 * locator, with small limits so the fuzzer explores refusals instead of allocating gigabytes. */
#include <stddef.h>
#include <stdint.h>

#include "util/archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    archive_limits lim = {1000, 1u << 20, 4u << 20, 0, 0};
    archive_items items = ARCHIVE_ITEMS_INIT;
    lt_err err;
    if (archive_unpack_mem(data, size, &lim, &items, &err) == 0) {
        archive_items_root(&items, "dataset.yaml", &err);
        for (size_t i = 0; i < items.n; i++)
            (void)archive_items_find(&items, items.v[i].path);
        archive_items_free(&items);
    }
    return 0;
}
