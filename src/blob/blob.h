/* blob.h: content-addressed files under the data dir.
 *
 * A blob is named by the SHA-256 of its bytes, written as the digest string "sha256:<64 lowercase hex>".
 * The file for digest sha256:abcdef... lives at <data dir>/blobs/sha256/ab/cdef... (first two hex chars are a
 * fan-out directory). Writes go to a temp file in <data dir>/blobs/tmp, are fsync'd, then renamed into place,
 * so a reader sees a whole blob or none; writing a blob that exists is a cheap no-op (same bytes, same name).
 * The store is safe to use from several threads and processes (a shared data dir when scaled out).
 *
 * Ownership: the blob_store handle is the caller's (blob_close). Functions returning char * return malloc'd
 * strings (caller frees). Errors: -1/NULL with err (404 absent blob, 400 bad digest string, 500 I/O). */
#ifndef LATHE_BLOB_BLOB_H
#define LATHE_BLOB_BLOB_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define BLOB_DIGEST_LEN 72 /* "sha256:" + 64 hex + NUL */

typedef struct blob_store blob_store;
typedef struct blob_writer blob_writer;

/* Opens (creating the directories) the blob store under data_dir: <data dir>/blobs, or the directory named by
 * the environment variable LATHE_BLOB_DIR when it is set and not empty (`--blob-dir DIR` of lathe serve and
 * lathe worker sets it: one directory shared by several servers and workers, e.g. over NFS, when the store is
 * PostgreSQL). NULL with err on failure. */
blob_store *blob_open(const char *data_dir, lt_err *err);
void blob_close(blob_store *bs); /* NULL is a no-op */

/* The root directory of the store (<data dir>/blobs or LATHE_BLOB_DIR); owned by the handle. */
const char *blob_root(const blob_store *bs);

/* 1 when s is "sha256:" + 64 lowercase hex chars. */
int blob_digest_valid(const char *s);

/* Stores n bytes from memory; digest receives "sha256:<hex>". 0 or -1 with err. */
int blob_put(blob_store *bs, const void *data, size_t n, char digest[BLOB_DIGEST_LEN], lt_err *err);

/* Stores a copy of the file at path (the file is left as it is); digest and *size (may be NULL) receive the
 * result. Streams: memory use does not grow with the file. */
int blob_put_file(blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN], int64_t *size, lt_err *err);

/* Streaming writer: open, write any number of chunks, then finish (digest computed on the way) or abort.
 * blob_writer_finish and blob_writer_abort free the writer whatever happens. */
blob_writer *blob_writer_open(blob_store *bs, lt_err *err);
int blob_writer_write(blob_writer *w, const void *data, size_t n, lt_err *err);
int blob_writer_finish(blob_writer *w, char digest[BLOB_DIGEST_LEN], int64_t *size, lt_err *err);
void blob_writer_abort(blob_writer *w);

/* Removes the regular files in dir named PREFIX*SUFFIX that no live process holds an flock(2) on (what a
 * killed writer leaves). Returns how many were removed (a missing dir: 0), or -1 with err. */
int blob_sweep_dir(const char *dir, const char *prefix, const char *suffix, lt_err *err);
/* blob_sweep_dir over the store's temp dir: the `.part` files of killed writers. */
int blob_sweep(blob_store *bs, lt_err *err);

/* Path of the blob's file (malloc'd), or NULL with err 404 when absent / 400 for a bad digest. */
char *blob_path(blob_store *bs, const char *digest, lt_err *err);
/* 1 present, 0 absent (or bad digest). */
int blob_exists(blob_store *bs, const char *digest);
/* Size in bytes, or -1 with err (404 absent). */
int64_t blob_size(blob_store *bs, const char *digest, lt_err *err);
/* Reads a whole blob into memory (malloc'd, NUL-terminated, *len excludes the NUL); NULL with err. */
char *blob_read(blob_store *bs, const char *digest, size_t *len, lt_err *err);
/* Deletes the blob; deleting an absent blob is not an error (0). -1 with err on a bad digest or I/O error. */
int blob_delete(blob_store *bs, const char *digest, lt_err *err);

#endif
