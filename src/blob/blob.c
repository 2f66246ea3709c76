/* blob.c: content-addressed files (see blob.h).
 *
 * Every write goes through a blob_writer: bytes stream into a temp file under <root>/tmp (same filesystem as
 * the final place, so rename(2) is atomic) while a SHA-256 runs over them; at the end the file is fsync'd,
 * renamed to <root>/sha256/<2 hex>/<62 hex>, and the fan-out directory fsync'd so that the name survives a
 * crash. If the final name exists already, the bytes are the same by construction: the temp file is simply
 * removed. Readers open the final path and so never see a partial blob.
 *
 * Leftovers. A writer holds an exclusive flock(2) on its temp file for as long as it lives; a process killed
 * mid-write leaves a `.part` file that nobody locks. blob_sweep_dir removes exactly those (it takes the lock
 * before unlinking), so a sweep at start never touches the temp file of a live writer in another process
 * sharing the data dir. The server sweeps its own upload spools (<data dir>/tmp/upload-*) the same way.
 *
 * Hashing uses OpenSSL's EVP interface (libcrypto is already a dependency through util's lt_sha256). */
#include "blob/blob.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

struct blob_store {
    char *root;    /* <data dir>/blobs */
    char *tmp_dir; /* <root>/tmp */
};

struct blob_writer {
    blob_store *bs;
    int fd;
    char *tmp_path;
    EVP_MD_CTX *md;
    int64_t size;
};

blob_store *blob_open(const char *data_dir, lt_err *err) {
    if (!data_dir || !*data_dir) {
        lt_err_set(err, 400, "blob store needs a data dir");
        return NULL;
    }
    blob_store *bs = calloc(1, sizeof *bs);
    if (!bs) {
        lt_err_set(err, 500, "out of memory opening the blob store");
        return NULL;
    }
    const char *shared = getenv("LATHE_BLOB_DIR");
    bs->root = shared && *shared ? lt_strdup(shared) : lt_path_join(data_dir, "blobs");
    bs->tmp_dir = lt_path_join(bs->root, "tmp");
    char *sha = lt_path_join(bs->root, "sha256");
    int rc = lt_mkdir_p(bs->tmp_dir, 0755, err) || lt_mkdir_p(sha, 0755, err);
    free(sha);
    if (rc) {
        lt_err_prefix(err, "blob store: ");
        blob_close(bs);
        return NULL;
    }
    return bs;
}

int blob_sweep_dir(const char *dir, const char *prefix, const char *suffix, lt_err *err) {
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return lt_err_set(err, 500, "cannot read %s: %s", dir, strerror(errno));
    }
    int removed = 0;
    size_t pl = strlen(prefix), sl = strlen(suffix);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < pl + sl || strncmp(de->d_name, prefix, pl) || strcmp(de->d_name + n - sl, suffix)) continue;
        int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            unlinkat(dirfd(d), de->d_name, 0) == 0)
            removed++;
        close(fd);
    }
    closedir(d);
    return removed;
}

int blob_sweep(blob_store *bs, lt_err *err) {
    return blob_sweep_dir(bs->tmp_dir, "", ".part", err);
}

void blob_close(blob_store *bs) {
    if (!bs) return;
    free(bs->root);
    free(bs->tmp_dir);
    free(bs);
}

const char *blob_root(const blob_store *bs) {
    return bs->root;
}

int blob_digest_valid(const char *s) {
    if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != BLOB_DIGEST_LEN - 1) return 0;
    for (const char *p = s + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
    return 1;
}

/* <root>/sha256/ab/cdef... for a valid digest (malloc'd); dir_out (optional) gets the fan-out directory. */
static char *digest_path(const blob_store *bs, const char *digest, char **dir_out) {
    const char *hex = digest + 7;
    size_t n = strlen(bs->root) + 8 + 3 + 62 + 2;
    char *path = malloc(n);
    if (!path) abort();
    snprintf(path, n, "%s/sha256/%.2s/%s", bs->root, hex, hex + 2);
    if (dir_out) {
        *dir_out = malloc(n);
        if (!*dir_out) abort();
        snprintf(*dir_out, n, "%s/sha256/%.2s", bs->root, hex);
    }
    return path;
}

blob_writer *blob_writer_open(blob_store *bs, lt_err *err) {
    blob_writer *w = calloc(1, sizeof *w);
    if (!w) {
        lt_err_set(err, 500, "out of memory");
        return NULL;
    }
    w->bs = bs;
    w->fd = -1;
    char id[LT_UUID_LEN];
    lt_uuid4(id);
    size_t n = strlen(bs->tmp_dir) + LT_UUID_LEN + 8;
    w->tmp_path = malloc(n);
    if (!w->tmp_path) abort();
    snprintf(w->tmp_path, n, "%s/%s.part", bs->tmp_dir, id);
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd >= 0) flock(w->fd, LOCK_EX | LOCK_NB); /* "alive": see blob_sweep_dir */
    w->md = EVP_MD_CTX_new();
    if (w->fd < 0 || !w->md || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1) {
        lt_err_set(err, 500, "cannot create a temp file in %s: %s", bs->tmp_dir, strerror(errno));
        blob_writer_abort(w);
        return NULL;
    }
    return w;
}

int blob_writer_write(blob_writer *w, const void *data, size_t n, lt_err *err) {
    const char *p = data;
    if (EVP_DigestUpdate(w->md, data, n) != 1) return lt_err_set(err, 500, "sha256 update failed");
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return lt_err_set(err, 500, "cannot write blob temp file %s: %s", w->tmp_path, strerror(errno));
        }
        p += k;
        n -= (size_t)k;
        w->size += k;
    }
    return 0;
}

void blob_writer_abort(blob_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp_path) unlink(w->tmp_path);
    free(w->tmp_path);
    EVP_MD_CTX_free(w->md);
    free(w);
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int blob_writer_finish(blob_writer *w, char digest[BLOB_DIGEST_LEN], int64_t *size, lt_err *err) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(w->md, md, &mdlen) != 1 || mdlen != 32) {
        blob_writer_abort(w);
        return lt_err_set(err, 500, "sha256 final failed");
    }
    if (fsync(w->fd) != 0) {
        int e = errno;
        blob_writer_abort(w);
        return lt_err_set(err, 500, "cannot fsync blob temp file: %s", strerror(e));
    }
    close(w->fd);
    w->fd = -1;
    char d[BLOB_DIGEST_LEN];
    memcpy(d, "sha256:", 7);
    lt_hex(md, 32, d + 7);
    char *dir = NULL;
    char *path = digest_path(w->bs, d, &dir);
    int rc = 0;
    struct stat st;
    if (stat(path, &st) == 0) {
        unlink(w->tmp_path); /* same bytes already stored */
    } else if (lt_mkdir_p(dir, 0755, err) != 0) {
        rc = -1;
    } else if (rename(w->tmp_path, path) != 0) {
        rc = lt_err_set(err, 500, "cannot move blob into place at %s: %s", path, strerror(errno));
    } else {
        fsync_dir(dir);
    }
    if (rc == 0) {
        memcpy(digest, d, BLOB_DIGEST_LEN);
        if (size) *size = w->size;
    }
    free(dir);
    free(path);
    blob_writer_abort(w); /* frees; the temp file is gone or renamed, unlink fails harmlessly */
    return rc;
}

int blob_put(blob_store *bs, const void *data, size_t n, char digest[BLOB_DIGEST_LEN], lt_err *err) {
    blob_writer *w = blob_writer_open(bs, err);
    if (!w) return -1;
    if (blob_writer_write(w, data, n, err) != 0) {
        blob_writer_abort(w);
        return -1;
    }
    return blob_writer_finish(w, digest, NULL, err);
}

int blob_put_file(blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN], int64_t *size,
                  lt_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lt_err_set(err, errno == ENOENT ? 404 : 500, "cannot open %s: %s", path, strerror(errno));
    blob_writer *w = blob_writer_open(bs, err);
    if (!w) {
        close(fd);
        return -1;
    }
    char *buf = malloc(1 << 16);
    if (!buf) abort();
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, buf, 1 << 16);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            rc = lt_err_set(err, 500, "cannot read %s: %s", path, strerror(errno));
            break;
        }
        if (k == 0) break;
        if (blob_writer_write(w, buf, (size_t)k, err) != 0) {
            rc = -1;
            break;
        }
    }
    free(buf);
    close(fd);
    if (rc != 0) {
        blob_writer_abort(w);
        return -1;
    }
    return blob_writer_finish(w, digest, size, err);
}

char *blob_path(blob_store *bs, const char *digest, lt_err *err) {
    if (!blob_digest_valid(digest)) {
        lt_err_set(err, 400, "'%.80s' is not a digest: expected sha256:<64 lowercase hex>",
                   digest ? digest : "");
        return NULL;
    }
    char *path = digest_path(bs, digest, NULL);
    if (access(path, F_OK) != 0) {
        lt_err_set(err, 404, "blob %s not found", digest);
        free(path);
        return NULL;
    }
    return path;
}

int blob_exists(blob_store *bs, const char *digest) {
    char *p = blob_path(bs, digest, NULL);
    free(p);
    return p != NULL;
}

int64_t blob_size(blob_store *bs, const char *digest, lt_err *err) {
    char *p = blob_path(bs, digest, err);
    if (!p) return -1;
    struct stat st;
    int rc = stat(p, &st);
    free(p);
    if (rc != 0) return lt_err_set(err, 404, "blob %s not found", digest);
    return (int64_t)st.st_size;
}

char *blob_read(blob_store *bs, const char *digest, size_t *len, lt_err *err) {
    char *p = blob_path(bs, digest, err);
    if (!p) return NULL;
    char *data = lt_read_file(p, len, err);
    free(p);
    return data;
}

int blob_delete(blob_store *bs, const char *digest, lt_err *err) {
    if (!blob_digest_valid(digest))
        return lt_err_set(err, 400, "'%.80s' is not a digest: expected sha256:<64 lowercase hex>",
                          digest ? digest : "");
    char *p = digest_path(bs, digest, NULL);
    int rc = 0;
    if (unlink(p) != 0 && errno != ENOENT)
        rc = lt_err_set(err, 500, "cannot delete blob %s: %s", digest, strerror(errno));
    free(p);
    return rc;
}
