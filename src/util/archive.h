/* archive.h: safe reading of tar / tar.gz archives into memory, and packing a directory into one.
 *
 * An uploaded artifact is an archive from the outside world, so reading one is defensive: every entry becomes
 * a plain (path, bytes) item or the whole archive is refused. Refused: absolute paths, `..` components, links
 * whose target leaves the archive root or does not exist, links to directories, device files, fifos and
 * sockets, duplicate paths, a path that is both a file and a directory, non-UTF-8 or control characters in
 * names, and more entries / bytes / expansion than the limits allow (declared sizes are checked at each
 * header and actual bytes while decompressing, so a gzip bomb stops at the limit). Links whose target lies
 * inside the archive become copies of the target file; directories leave no item, and so do tool droppings
 * (.git, __pycache__, __MACOSX, .DS_Store, AppleDouble "._x" files), but only once the entry passed every
 * check above: the type and link rules apply whatever the name.
 *
 * Error codes (lt_err.code): 400 unreadable or unsafe archive, 413 over a limit, 422 manifest not found.
 *
 * Ownership: archive_items owns every path and data buffer; archive_items_free releases them. The prefix
 * `archive_` is shared with libarchive, so the names here avoid libarchive's (archive_read_*,
 * archive_write_*, archive_entry_*). */
#ifndef LATHE_UTIL_ARCHIVE_H
#define LATHE_UTIL_ARCHIVE_H

#include <stddef.h>

#include "util/err.h"

typedef struct archive_item {
    char *path;          /* normalized: relative, '/'-separated, no "." or ".." components, no trailing '/' */
    unsigned char *data; /* malloc'd, NUL-terminated after size bytes (handy for text parsers); NULL for the
                            files archive_scan_file did not read */
    size_t size;
    char *src; /* the entry whose bytes these are, as named in the archive (normalized): the path itself, or
                  a link's final target; archive_items_root leaves it unstripped */
} archive_item;

typedef struct archive_items {
    archive_item *v; /* sorted by path (byte order) after a successful unpack */
    size_t n, cap;
    size_t total; /* sum of sizes */
} archive_items;

#define ARCHIVE_ITEMS_INIT                                                                                   \
    { NULL, 0, 0, 0 }

typedef struct archive_limits {
    size_t max_entries;     /* headers of any kind, directories included */
    size_t max_file_bytes;  /* one file, unpacked */
    size_t max_total_bytes; /* all files together, unpacked (links count as copies) */
    unsigned max_ratio;     /* unpacked total / the archive's own size, checked once the total is over
                               ratio_floor; 0 = no ratio check */
    size_t ratio_floor;
} archive_limits;

/* 100,000 entries, 2 GiB per file, 4 GiB in all, no ratio check. */
archive_limits archive_limits_default(void);

/* Reads a tar (ustar, pax, GNU), optionally gzip-compressed, from memory. lim NULL = defaults. On success
 * out holds every regular file sorted by path and 0 is returned; on error out is left empty, err is filled,
 * and -1 is returned. out must be empty (ARCHIVE_ITEMS_INIT) on entry. */
int archive_unpack_mem(const void *buf, size_t n, const archive_limits *lim, archive_items *out, lt_err *err);

/* The same, reading the archive from a file. */
int archive_unpack_file(const char *path, const archive_limits *lim, archive_items *out, lt_err *err);

/* ---- streaming: bounded memory whatever the archive holds ----
 *
 * An upload is read twice from its file, never unpacked: archive_scan_file checks every header with all the
 * rules above (the declared sizes against the byte and ratio limits before any byte is read) and keeps in
 * memory only the few small files `want` picks (manifests, prompts); archive_stream_files then walks the
 * archive again and hands each regular file to a callback that reads its bytes in chunks (a row parser). */

typedef struct archive_want {
    int (*fn)(const char *path, void *ud); /* 1 = read this file's bytes into memory */
    void *ud;
    size_t max_file;  /* one wanted file (413 above) */
    size_t max_total; /* every wanted file together (413 above) */
    /* Optional (NULL = none): called as soon as a wanted file's bytes are in, in archive order; non-zero
     * stops the scan with the callback's err (e.g. a 409 for a version that exists, before the rest is read).
     */
    int (*seen)(const char *path, const unsigned char *data, size_t size, void *ud, lt_err *err);
} archive_want;

/* Like archive_unpack_file, but only the wanted files get data; the others have data NULL and the size
 * their header declares. Items' src name the entry to stream for each path (links resolved). */
int archive_scan_file(const char *path, const archive_limits *lim, const archive_want *want,
                      archive_items *out, lt_err *err);

typedef struct archive_stream archive_stream;

/* Reads up to n bytes of the current entry: the count, 0 at its end, -1 with err (400 malformed, 413 over a
 * limit of lim, counted on the bytes actually read). */
long archive_stream_read(archive_stream *s, void *buf, size_t n, lt_err *err);

/* Called for each regular file (not a link, not a tool dropping) with its normalized path; it may read the
 * bytes with archive_stream_read or leave them (they are skipped). 0 goes on; non-zero stops with err. */
typedef int (*archive_stream_fn)(const char *src, archive_stream *s, void *ud, lt_err *err);

/* Walks the archive at path (already checked by archive_scan_file) in archive order. 0, or -1 with err. */
int archive_stream_files(const char *path, const archive_limits *lim, archive_stream_fn fn, void *ud,
                         lt_err *err);

/* Finds an item by normalized path; NULL when absent. Borrowed pointer, valid until the items change. */
const archive_item *archive_items_find(const archive_items *items, const char *path);

/* Locates `manifest` (e.g. "dataset.yaml") at the root, or inside a single top-level directory that holds
 * every item; in the second case strips "DIR/" from every path. 422 when it is in neither place. */
int archive_items_root(archive_items *items, const char *manifest, lt_err *err);

void archive_items_free(archive_items *items);

/* Packs the regular files under dir (recursively, in sorted order, paths relative to dir) into a
 * reproducible archive: mtimes, owners and the gzip timestamp are zeroed, modes are 0644, so the same tree
 * gives the same bytes and the same digest. `.git`, `__pycache__` and `.DS_Store` are skipped; symbolic links
 * to regular files are stored as files, other links are skipped. gzip != 0 compresses. *out is malloc'd. */
int archive_pack_dir(const char *dir, int gzip, unsigned char **out, size_t *out_len, lt_err *err);

#endif
