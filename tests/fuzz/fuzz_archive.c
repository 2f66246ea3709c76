/* libFuzzer target for util/archive: arbitrary bytes through the safe tar/tar.gz reader and the manifest
 * locator, with small limits (a ratio limit included) so the fuzzer explores refusals instead of allocating
 * gigabytes; then the same bytes, as a file (memfd), through the upload path: archive_scan_file and, when
 * the scan accepts them, archive_stream_files reading every entry in small chunks. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/archive.h"

static int want_yaml(const char *path, void *ud) {
    (void)ud;
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".yaml");
}

static int read_all(const char *src, archive_stream *s, void *ud, lt_err *err) {
    (void)src;
    char buf[7];
    long r;
    while ((r = archive_stream_read(s, buf, sizeof buf, err)) > 0)
        *(size_t *)ud += (size_t)r;
    return r < 0 ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    archive_limits lim = {1000, 1u << 20, 4u << 20, 50, 1u << 16};
    archive_items items = ARCHIVE_ITEMS_INIT;
    lt_err err;
    if (archive_unpack_mem(data, size, &lim, &items, &err) == 0) {
        archive_items_root(&items, "dataset.yaml", &err);
        for (size_t i = 0; i < items.n; i++)
            (void)archive_items_find(&items, items.v[i].path);
        archive_items_free(&items);
    }
    int fd = memfd_create("fuzz-archive", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        archive_want want = {want_yaml, NULL, 4096, 16384, NULL};
        if (archive_scan_file(path, &lim, &want, &items, &err) == 0) {
            size_t total = 0;
            archive_stream_files(path, &lim, read_all, &total, &err);
            archive_items_free(&items);
        }
    }
    close(fd);
    return 0;
}
