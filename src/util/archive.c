/* archive.c: tar / tar.gz in and out of memory, with the safety rules of archive.h.
 *
 * Reading runs libarchive over the input with only the tar formats and the gzip filter enabled, and turns
 * each header into one of: a directory (counted, then forgotten), a regular file (its bytes read in chunks
 * while the per-file and total limits are checked, so neither a lying header nor a compression bomb gets past
 * them), a hard link (its target must be a file already seen), or a symbolic link (its target, taken relative
 * to the link's directory, must stay inside the root). Anything else is refused. Links are resolved after the
 * last header, into copies of their target's bytes, then the items are sorted by path.
 *
 * Paths are normalized once, on the way in: "./a//b/" becomes "a/b"; a leading '/', a ".." component, a
 * control character or invalid UTF-8 refuses the archive. Everything after that (lookups, manifest location)
 * can compare paths as plain strings.
 *
 * Writing walks a directory in sorted order and emits pax entries with zeroed metadata, so packing the same
 * tree twice yields the same bytes: a push of an unchanged directory gets the same digest. */
#include "util/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/strbuf.h"
#include "util/util.h"

#define PATH_MAX_LEN 1024
#define LINK_DEPTH 8

archive_limits archive_limits_default(void) {
    archive_limits l = {100000, (size_t)2 << 30, (size_t)4 << 30, 0, 0};
    return l;
}

/* ---- items ---- */

static archive_item *items_push(archive_items *it) {
    if (it->n == it->cap) {
        size_t cap = it->cap ? it->cap * 2 : 16;
        archive_item *v = realloc(it->v, cap * sizeof *v);
        if (!v) abort();
        it->v = v;
        it->cap = cap;
    }
    archive_item *x = &it->v[it->n++];
    memset(x, 0, sizeof *x);
    return x;
}

void archive_items_free(archive_items *items) {
    if (!items) return;
    for (size_t i = 0; i < items->n; i++) {
        free(items->v[i].path);
        free(items->v[i].src);
        free(items->v[i].data);
    }
    free(items->v);
    memset(items, 0, sizeof *items);
}

static int item_cmp(const void *a, const void *b) {
    return strcmp(((const archive_item *)a)->path, ((const archive_item *)b)->path);
}

const archive_item *archive_items_find(const archive_items *items, const char *path) {
    if (!items || !path || items->n == 0) return NULL;
    archive_item key = {(char *)path, NULL, 0, NULL};
    return bsearch(&key, items->v, items->n, sizeof key, item_cmp);
}

/* ---- paths ---- */

/* Normalizes `in` into out (PATH_MAX_LEN bytes). Returns 0, or -1 with a reason in *why. An empty result
 * (the root itself, "./") is allowed and means "skip this entry". */
static int norm_path(const char *in, char out[PATH_MAX_LEN], const char **why) {
    size_t n = strlen(in);
    if (n >= PATH_MAX_LEN) return *why = "path longer than 1023 bytes", -1;
    if (!lt_utf8_valid(in, n)) return *why = "path is not valid UTF-8", -1;
    if (in[0] == '/') return *why = "absolute path", -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f) return *why = "control character in path", -1;
    size_t o = 0;
    const char *p = in;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return *why = "'..' in path", -1;
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            if (o) out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
        if (*p == '/') p++;
    }
    out[o] = '\0';
    return 0;
}

/* Resolves a symbolic link's target relative to the link's directory. -1 when it leaves the root. */
static int resolve_symlink(const char *link_path, const char *target, char out[PATH_MAX_LEN]) {
    if (target[0] == '/' || strlen(link_path) + strlen(target) + 2 >= PATH_MAX_LEN) return -1;
    char joined[2 * PATH_MAX_LEN];
    const char *slash = strrchr(link_path, '/');
    size_t dlen = slash ? (size_t)(slash - link_path) : 0;
    memcpy(joined, link_path, dlen);
    joined[dlen] = '\0';
    if (dlen) strcat(joined, "/");
    strcat(joined, target);
    /* walk the components, keeping a stack; popping past the root means escaping */
    size_t o = 0;
    const char *p = joined;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (o == 0) return -1;
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0) o--; /* drop the separator */
        } else if (len > 0 && !(len == 1 && p[0] == '.')) {
            if (o) out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
        if (*p == '/') p++;
    }
    out[o] = '\0';
    return o ? 0 : -1;
}

/* ---- unpacking ---- */

typedef struct pending_link {
    char *path;   /* the link */
    char *target; /* normalized target, relative to the root */
    int hard;
} pending_link;

typedef struct unpack_state {
    archive_limits lim;
    const archive_want *want; /* NULL: every file's bytes are read into memory */
    size_t want_used;         /* bytes of wanted files held so far */
    size_t archive_size;      /* the archive's own (compressed) size, for the expansion ratio */
    size_t declared;          /* sum of the sizes the headers declare */
    archive_items *out;
    pending_link *links;
    size_t nlinks, caplinks;
    char **dirs; /* directory paths, to tell "link to a directory" from "dangling link" */
    size_t ndirs, capdirs;
} unpack_state;

static void state_free(unpack_state *st) {
    for (size_t i = 0; i < st->nlinks; i++) {
        free(st->links[i].path);
        free(st->links[i].target);
    }
    free(st->links);
    for (size_t i = 0; i < st->ndirs; i++)
        free(st->dirs[i]);
    free(st->dirs);
}

static void add_link(unpack_state *st, const char *path, const char *target, int hard) {
    if (st->nlinks == st->caplinks) {
        st->caplinks = st->caplinks ? st->caplinks * 2 : 8;
        st->links = realloc(st->links, st->caplinks * sizeof *st->links);
        if (!st->links) abort();
    }
    st->links[st->nlinks++] = (pending_link){lt_strdup(path), lt_strdup(target), hard};
}

static void add_dir(unpack_state *st, const char *path) {
    if (st->ndirs == st->capdirs) {
        st->capdirs = st->capdirs ? st->capdirs * 2 : 8;
        st->dirs = realloc(st->dirs, st->capdirs * sizeof *st->dirs);
        if (!st->dirs) abort();
    }
    st->dirs[st->ndirs++] = lt_strdup(path);
}

static int is_dir_path(const unpack_state *st, const char *path) {
    for (size_t i = 0; i < st->ndirs; i++)
        if (strcmp(st->dirs[i], path) == 0) return 1;
    /* implied directories: some archives name "a/b" without an "a/" entry */
    size_t n = strlen(path);
    for (size_t i = 0; i < st->out->n; i++)
        if (strncmp(st->out->v[i].path, path, n) == 0 && st->out->v[i].path[n] == '/') return 1;
    return 0;
}

/* Tool droppings never part of an artifact: .git, __pycache__, __MACOSX, .DS_Store and AppleDouble "._x"
 * files, anywhere in the tree. */
static int is_junk(const char *path) {
    const char *p = path;
    while (*p) {
        size_t len = strcspn(p, "/");
        if ((len == 4 && !strncmp(p, ".git", 4)) || (len == 11 && !strncmp(p, "__pycache__", 11)) ||
            (len == 8 && !strncmp(p, "__MACOSX", 8)) || (len == 9 && !strncmp(p, ".DS_Store", 9)) ||
            (len > 2 && !strncmp(p, "._", 2)))
            return 1;
        p += len;
        if (*p == '/') p++;
    }
    return 0;
}

static int over_total(const archive_limits *lim, lt_err *err) {
    return lt_err_set(err, 413, "archive: unpacked contents are over the limit of %zu bytes",
                      lim->max_total_bytes);
}

/* The expansion-ratio rule: past ratio_floor bytes, the unpacked total may be at most max_ratio times the
 * archive's own size. 0, or -1 with a 413. */
static int check_ratio(const archive_limits *lim, size_t archive_size, size_t total, lt_err *err) {
    if (!lim->max_ratio || !archive_size || total <= lim->ratio_floor) return 0;
    if (total / lim->max_ratio < archive_size) return 0;
    return lt_err_set(err, 413,
                      "archive: unpacks to more than %u times its own size of %zu bytes (over %zu bytes "
                      "so far); the expansion ratio limit is %u",
                      lim->max_ratio, archive_size, total, lim->max_ratio);
}

/* What the headers declare is checked before any byte is read, so a bomb's first header stops it. */
static int check_declared(unpack_state *st, const char *path, int64_t declared, lt_err *err) {
    if (declared <= 0) return 0;
    if ((uint64_t)declared > st->lim.max_file_bytes)
        return lt_err_set(err, 413, "archive: %s is %lld bytes, over the per-file limit of %zu bytes", path,
                          (long long)declared, st->lim.max_file_bytes);
    st->declared += (size_t)declared;
    if (st->declared > st->lim.max_total_bytes) return over_total(&st->lim, err);
    return check_ratio(&st->lim, st->archive_size, st->declared, err);
}

/* Reads the current entry's bytes into memory, at most cap bytes (code 413 and `what` above). */
static int read_into(struct archive *a, const unpack_state *st, const char *path, size_t cap,
                     const char *what, strbuf *sb, lt_err *err) {
    char chunk[65536];
    for (;;) {
        la_ssize_t r = archive_read_data(a, chunk, sizeof chunk);
        if (r == 0) return 0;
        if (r < 0)
            return lt_err_set(err, 400, "archive: malformed archive while reading %s: %s", path,
                              archive_error_string(a) ? archive_error_string(a) : "read error");
        if (sb->len + (size_t)r > cap)
            return lt_err_set(err, 413, "archive: %s is over the %s of %zu bytes", path, what, cap);
        if (st->out->total + sb->len + (size_t)r > st->lim.max_total_bytes) return over_total(&st->lim, err);
        if (check_ratio(&st->lim, st->archive_size, st->out->total + sb->len + (size_t)r, err) != 0)
            return -1;
        sb_append(sb, chunk, (size_t)r);
    }
}

static int read_file_data(struct archive *a, unpack_state *st, const char *path, int64_t declared,
                          lt_err *err) {
    if (check_declared(st, path, declared, err) != 0) return -1;
    strbuf sb = STRBUF_INIT;
    int keep = 1;
    size_t size = 0;
    if (st->want) {
        keep = st->want->fn(path, st->want->ud);
        if (keep && declared > 0 && (uint64_t)declared > st->want->max_file)
            return lt_err_set(err, 413,
                              "archive: %s is %lld bytes, over the limit of %zu bytes for this file", path,
                              (long long)declared, st->want->max_file);
        if (keep && st->want_used + (declared > 0 ? (size_t)declared : 0) > st->want->max_total)
            return lt_err_set(err, 413,
                              "archive: the manifests and prompts together are over the limit of %zu bytes",
                              st->want->max_total);
    }
    if (keep) {
        size_t cap = st->want ? st->want->max_file : st->lim.max_file_bytes;
        if (read_into(a, st, path, cap, st->want ? "limit for this file" : "per-file limit", &sb, err) != 0) {
            sb_free(&sb);
            return -1;
        }
        size = sb.len;
        st->want_used += sb.len;
    } else {
        /* only the header's size is needed now; the bytes are read later, by archive_stream_files */
        size = declared > 0 ? (size_t)declared : 0;
    }
    archive_item *x = items_push(st->out);
    x->path = lt_strdup(path);
    x->src = lt_strdup(path);
    x->size = size;
    if (sb.buf) {
        x->data = (unsigned char *)sb_steal(&sb);
    } else if (keep) {
        x->data = calloc(1, 1);
        if (!x->data) abort();
    }
    st->out->total += x->size;
    if (keep && st->want && st->want->seen && st->want->seen(path, x->data, x->size, st->want->ud, err) != 0)
        return -1;
    return 0;
}

/* Checks one header. The type and link rules come first, whatever the name: only then may a tool dropping
 * (is_junk) be skipped, so a `.git` symlink out of the root is refused like any other. */
static int unpack_entry(struct archive *a, struct archive_entry *e, unpack_state *st, lt_err *err) {
    const char *raw = archive_entry_pathname(e);
    if (!raw) return lt_err_set(err, 400, "archive: an entry has no name");
    char path[PATH_MAX_LEN];
    const char *why = NULL;
    if (norm_path(raw, path, &why) != 0)
        return lt_err_set(err, 400, "archive: unsafe entry '%.200s': %s", raw, why);
    mode_t type = archive_entry_filetype(e);
    const char *hard = archive_entry_hardlink(e);
    if (path[0] == '\0') {
        if (type == AE_IFDIR && !hard) return 0; /* "./" */
        return lt_err_set(err, 400, "archive: an entry has an empty name");
    }
    int junk = is_junk(path);
    if (hard) {
        char target[PATH_MAX_LEN];
        if (norm_path(hard, target, &why) != 0)
            return lt_err_set(err, 400, "archive: hard link %s points outside the archive (%s)", path, why);
        if (target[0] == '\0') return lt_err_set(err, 400, "archive: hard link %s has an empty target", path);
        if (!junk) add_link(st, path, target, 1);
        return 0;
    }
    switch (type) {
    case AE_IFDIR:
        if (!junk) add_dir(st, path);
        return 0;
    case AE_IFREG:
        /* a dropping's bytes are skipped with the next header, but still decompressed: they count */
        if (junk)
            return check_declared(st, path, archive_entry_size_is_set(e) ? archive_entry_size(e) : -1, err);
        return read_file_data(a, st, path, archive_entry_size_is_set(e) ? archive_entry_size(e) : -1, err);
    case AE_IFLNK: {
        const char *t = archive_entry_symlink(e);
        char target[PATH_MAX_LEN];
        if (!t || !t[0]) return lt_err_set(err, 400, "archive: symbolic link %s has no target", path);
        if (!lt_utf8_valid(t, strlen(t)) || resolve_symlink(path, t, target) != 0)
            return lt_err_set(
                err, 400, "archive: symbolic link %s points outside the archive root ('%.200s')", path, t);
        if (!junk) add_link(st, path, target, 0);
        return 0;
    }
    case AE_IFCHR:
    case AE_IFBLK:
        return lt_err_set(
            err, 400, "archive: %s is a device file; only regular files and directories are allowed", path);
    case AE_IFIFO:
        return lt_err_set(err, 400, "archive: %s is a fifo; only regular files and directories are allowed",
                          path);
    case AE_IFSOCK:
        return lt_err_set(err, 400, "archive: %s is a socket; only regular files and directories are allowed",
                          path);
    default:
        return lt_err_set(err, 400, "archive: %s has an unsupported entry type", path);
    }
}

static int link_cmp(const void *a, const void *b) {
    return strcmp(((const pending_link *)a)->path, ((const pending_link *)b)->path);
}

static const pending_link *find_link(const unpack_state *st, const char *path) {
    if (st->nlinks == 0) return NULL;
    pending_link key = {(char *)path, NULL, 0};
    return bsearch(&key, st->links, st->nlinks, sizeof key, link_cmp);
}

/* 1 when path names a file or a link (files: the first nfiles items, sorted; links sorted). */
static int is_file_or_link(const unpack_state *st, size_t nfiles, const char *path) {
    archive_items files = {st->out->v, nfiles, st->out->cap, 0};
    return archive_items_find(&files, path) != NULL || find_link(st, path) != NULL;
}

/* Refuses a path that is a file (or link) and also a directory: an explicit directory entry of the same
 * name, or the parent of another entry. */
static int check_file_dir(const unpack_state *st, size_t nfiles, const char *path, lt_err *err) {
    char buf[PATH_MAX_LEN];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *slash = strchr(buf, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        int clash = is_file_or_link(st, nfiles, buf);
        if (clash)
            return lt_err_set(
                err, 400,
                "archive: %s is both a file and a directory (%s is inside it); each path may be "
                "one or the other",
                buf, path);
        *slash = '/';
    }
    return 0;
}

static int check_conflicts(const unpack_state *st, lt_err *err) {
    size_t nfiles = st->out->n;
    for (size_t i = 0; i < st->ndirs; i++) {
        if (is_file_or_link(st, nfiles, st->dirs[i]))
            return lt_err_set(err, 400,
                              "archive: %s is both a file and a directory; each path may be one or the other",
                              st->dirs[i]);
        if (check_file_dir(st, nfiles, st->dirs[i], err) != 0) return -1;
    }
    for (size_t i = 0; i < nfiles; i++)
        if (check_file_dir(st, nfiles, st->out->v[i].path, err) != 0) return -1;
    for (size_t i = 0; i < st->nlinks; i++)
        if (check_file_dir(st, nfiles, st->links[i].path, err) != 0) return -1;
    return 0;
}

/* Sorts the items and links, refuses duplicate paths and file/directory clashes, and turns each link into a
 * copy of its final target (following chains of links up to LINK_DEPTH): its bytes when the target's are in
 * memory, and always its size and src. Leaves the items sorted. */
static int finish_items(unpack_state *st, lt_err *err) {
    archive_items *it = st->out;
    if (it->n) qsort(it->v, it->n, sizeof *it->v, item_cmp); /* qsort(NULL, 0) is undefined */
    if (st->nlinks) qsort(st->links, st->nlinks, sizeof *st->links, link_cmp);
    for (size_t i = 1; i < it->n; i++)
        if (strcmp(it->v[i - 1].path, it->v[i].path) == 0)
            return lt_err_set(err, 400, "archive: %s appears twice; each path may appear once",
                              it->v[i].path);
    for (size_t i = 0; i < st->nlinks; i++)
        if ((i > 0 && strcmp(st->links[i - 1].path, st->links[i].path) == 0) ||
            archive_items_find(it, st->links[i].path))
            return lt_err_set(err, 400, "archive: %s appears twice; each path may appear once",
                              st->links[i].path);
    if (check_conflicts(st, err) != 0) return -1;
    size_t nfiles = it->n; /* copies are appended after the sorted files */
    for (size_t i = 0; i < st->nlinks; i++) {
        const pending_link *l = &st->links[i];
        const char *t = l->target;
        const archive_item *target = NULL;
        archive_items files = {it->v, nfiles, it->cap, 0};
        for (int depth = 0; depth < LINK_DEPTH; depth++) {
            if ((target = archive_items_find(&files, t)) != NULL) break;
            const pending_link *next = find_link(st, t);
            if (!next) break;
            t = next->target;
        }
        if (!target) {
            if (is_dir_path(st, t))
                return lt_err_set(err, 400,
                                  "archive: link %s points to a directory; only links to files are allowed",
                                  l->path);
            return lt_err_set(err, 400, "archive: link %s points to %s, which is not a file in the archive",
                              l->path, l->target);
        }
        if (it->total + target->size > st->lim.max_total_bytes) return over_total(&st->lim, err);
        if (check_ratio(&st->lim, st->archive_size, it->total + target->size, err) != 0) return -1;
        size_t tidx = (size_t)(target - it->v);
        archive_item *x = items_push(it); /* may move it->v */
        const archive_item *src = &it->v[tidx];
        x->path = lt_strdup(l->path);
        x->src = lt_strdup(src->src);
        x->size = src->size;
        if (src->data) {
            if (st->want && st->want->fn(l->path, st->want->ud)) {
                if (st->want_used + src->size > st->want->max_total)
                    return lt_err_set(
                        err, 413,
                        "archive: the manifests and prompts together are over the limit of %zu bytes",
                        st->want->max_total);
                st->want_used += src->size;
            }
            x->data = malloc(src->size + 1);
            if (!x->data) abort();
            memcpy(x->data, src->data, src->size);
            x->data[x->size] = '\0';
        } else if (st->want && st->want->fn(l->path, st->want->ud)) {
            /* its bytes were skipped, as the target's name is not one the scan reads */
            return lt_err_set(err, 400,
                              "archive: %s is a link to %s; put the file itself there (a manifest or prompt "
                              "must be a regular file or a link to another manifest or prompt)",
                              l->path, src->src);
        }
        it->total += x->size;
    }
    if (st->nlinks) qsort(it->v, it->n, sizeof *it->v, item_cmp);
    return 0;
}

static int unpack(struct archive *a, const archive_limits *lim, const archive_want *want, size_t archive_size,
                  archive_items *out, lt_err *err) {
    assert(out && out->n == 0);
    unpack_state st = {0};
    st.lim = lim ? *lim : archive_limits_default();
    st.want = want;
    st.archive_size = archive_size;
    st.out = out;
    size_t entries = 0;
    int rc = 0;
    for (;;) {
        struct archive_entry *e = NULL;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            const char *m = archive_error_string(a);
            rc = lt_err_set(err, 400, "archive: malformed archive (%s); send a tar or tar.gz file",
                            m ? m : "unreadable header");
            break;
        }
        if (++entries > st.lim.max_entries) {
            rc = lt_err_set(err, 413, "archive: more than %zu entries", st.lim.max_entries);
            break;
        }
        if ((rc = unpack_entry(a, e, &st, err)) != 0) break;
    }
    if (rc == 0 && entries == 0) {
        /* libarchive accepts an empty input as an empty archive; tell the user what arrived */
        rc = lt_err_set(err, 400, "archive: the archive is empty");
    }
    if (rc == 0) rc = finish_items(&st, err);
    state_free(&st);
    if (rc != 0) {
        archive_items_free(out);
        return -1;
    }
    return 0;
}

static struct archive *reader_new(void) {
    struct archive *a = archive_read_new();
    if (!a) abort();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    return a;
}

int archive_unpack_mem(const void *buf, size_t n, const archive_limits *lim, archive_items *out,
                       lt_err *err) {
    if (n == 0) return lt_err_set(err, 400, "archive: the body is empty; send a tar or tar.gz file");
    struct archive *a = reader_new();
    int rc;
    if (archive_read_open_memory(a, buf, n) != ARCHIVE_OK) {
        const char *m = archive_error_string(a);
        rc = lt_err_set(err, 400, "archive: not a tar or tar.gz archive (%s)", m ? m : "unrecognized format");
    } else {
        rc = unpack(a, lim, NULL, n, out, err);
    }
    archive_read_free(a);
    return rc;
}

/* Opens the archive file for reading; *size receives its size. NULL with err. */
static struct archive *open_file(const char *path, size_t *size, lt_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        lt_err_set(err, 400, "archive: cannot read the archive: %s", strerror(errno));
        return NULL;
    }
    *size = (size_t)sb.st_size;
    struct archive *a = reader_new();
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK) {
        const char *m = archive_error_string(a);
        /* the path is ours (a spooled upload), not the user's: keep it out of the message */
        lt_err_set(err, 400, "archive: not a tar or tar.gz archive (%s)", m ? m : "unreadable");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static int unpack_file(const char *path, const archive_limits *lim, const archive_want *want,
                       archive_items *out, lt_err *err) {
    size_t size = 0;
    struct archive *a = open_file(path, &size, err);
    if (!a) return -1;
    int rc = unpack(a, lim, want, size, out, err);
    archive_read_free(a);
    return rc;
}

int archive_unpack_file(const char *path, const archive_limits *lim, archive_items *out, lt_err *err) {
    return unpack_file(path, lim, NULL, out, err);
}

int archive_scan_file(const char *path, const archive_limits *lim, const archive_want *want,
                      archive_items *out, lt_err *err) {
    assert(want && want->fn);
    return unpack_file(path, lim, want, out, err);
}

/* ---- streaming the bytes of entries ---- */

struct archive_stream {
    struct archive *a;
    const archive_limits *lim;
    size_t archive_size;
    size_t total; /* bytes read from every entry so far */
    size_t file;  /* bytes read from this entry */
    const char *path;
};

long archive_stream_read(archive_stream *s, void *buf, size_t n, lt_err *err) {
    la_ssize_t r = archive_read_data(s->a, buf, n);
    if (r < 0)
        return lt_err_set(err, 400, "archive: malformed archive while reading %s: %s", s->path,
                          archive_error_string(s->a) ? archive_error_string(s->a) : "read error");
    s->file += (size_t)r;
    s->total += (size_t)r;
    if (s->file > s->lim->max_file_bytes)
        return lt_err_set(err, 413, "archive: %s is over the per-file limit of %zu bytes", s->path,
                          s->lim->max_file_bytes);
    if (s->total > s->lim->max_total_bytes) return over_total(s->lim, err);
    if (check_ratio(s->lim, s->archive_size, s->total, err) != 0) return -1;
    return (long)r;
}

int archive_stream_files(const char *path, const archive_limits *lim, archive_stream_fn fn, void *ud,
                         lt_err *err) {
    archive_limits l = lim ? *lim : archive_limits_default();
    archive_stream s = {0};
    s.lim = &l;
    s.a = open_file(path, &s.archive_size, err);
    if (!s.a) return -1;
    int rc = 0;
    for (;;) {
        struct archive_entry *e = NULL;
        int r = archive_read_next_header(s.a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            const char *m = archive_error_string(s.a);
            rc = lt_err_set(err, 400, "archive: malformed archive (%s)", m ? m : "unreadable header");
            break;
        }
        const char *raw = archive_entry_pathname(e);
        char npath[PATH_MAX_LEN];
        const char *why = NULL;
        if (!raw || norm_path(raw, npath, &why) != 0) {
            rc = lt_err_set(err, 400, "archive: unsafe entry '%.200s'", raw ? raw : "");
            break;
        }
        if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) || !npath[0] || is_junk(npath))
            continue;
        s.file = 0;
        s.path = npath;
        if ((rc = fn(npath, &s, ud, err)) != 0) break;
    }
    archive_read_free(s.a);
    return rc ? -1 : 0;
}

int archive_items_root(archive_items *items, const char *manifest, lt_err *err) {
    if (archive_items_find(items, manifest)) return 0;
    /* a single top-level directory holding everything? */
    if (items->n > 0) {
        const char *first = items->v[0].path;
        const char *slash = strchr(first, '/');
        if (slash) {
            size_t plen = (size_t)(slash - first) + 1;
            int all = 1;
            for (size_t i = 0; i < items->n && all; i++)
                if (strncmp(items->v[i].path, first, plen) != 0) all = 0;
            if (all) {
                char want[PATH_MAX_LEN * 2];
                snprintf(want, sizeof want, "%.*s%s", (int)plen, first, manifest);
                if (archive_items_find(items, want)) {
                    for (size_t i = 0; i < items->n; i++) {
                        char *p = items->v[i].path;
                        memmove(p, p + plen, strlen(p + plen) + 1);
                    }
                    return 0; /* stripping a common prefix keeps the order */
                }
            }
        }
    }
    return lt_err_set(
        err, 422,
        "%s not found: put it at the archive root or inside a single top-level directory that holds "
        "everything else",
        manifest);
}

/* ---- packing ---- */

static la_ssize_t pack_write(struct archive *a, void *ud, const void *buf, size_t n) {
    (void)a;
    sb_append((strbuf *)ud, buf, n);
    return (la_ssize_t)n;
}

static int skip_name(const char *name) {
    return strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, ".git") == 0 ||
           strcmp(name, "__pycache__") == 0 || strcmp(name, ".DS_Store") == 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int pack_tree(struct archive *w, const char *root, const char *rel, int depth, lt_err *err) {
    if (depth > 64) return lt_err_set(err, 400, "%s: directories nested too deeply", root);
    char *dirpath = rel[0] ? lt_path_join(root, rel) : lt_strdup(root);
    DIR *d = opendir(dirpath);
    if (!d) {
        lt_err_set(err, 400, "cannot open directory %s: %s", dirpath, strerror(errno));
        free(dirpath);
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (skip_name(de->d_name)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            names = realloc(names, cap * sizeof *names);
            if (!names) abort();
        }
        names[n++] = lt_strdup(de->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, name_cmp);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char *relp = rel[0] ? lt_path_join(rel, names[i]) : lt_strdup(names[i]);
        char *full = lt_path_join(root, relp);
        struct stat sb;
        if (lstat(full, &sb) != 0) {
            rc = lt_err_set(err, 400, "cannot read %s: %s", full, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            rc = pack_tree(w, root, relp, depth + 1, err);
        } else if (S_ISREG(sb.st_mode) ||
                   (S_ISLNK(sb.st_mode) && stat(full, &sb) == 0 && S_ISREG(sb.st_mode))) {
            size_t len = 0;
            char *data = lt_read_file(full, &len, err);
            if (!data) {
                rc = -1;
            } else {
                struct archive_entry *e = archive_entry_new();
                if (!e) abort();
                archive_entry_set_pathname(e, relp);
                archive_entry_set_filetype(e, AE_IFREG);
                archive_entry_set_perm(e, 0644);
                archive_entry_set_size(e, (la_int64_t)len);
                archive_entry_set_mtime(e, 0, 0);
                if (archive_write_header(w, e) != ARCHIVE_OK ||
                    (len && archive_write_data(w, data, len) != (la_ssize_t)len))
                    rc = lt_err_set(err, 500, "cannot pack %s: %s", relp,
                                    archive_error_string(w) ? archive_error_string(w) : "write error");
                archive_entry_free(e);
                free(data);
            }
        }
        free(full);
        free(relp);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(dirpath);
    return rc;
}

int archive_pack_dir(const char *dir, int gzip, unsigned char **out, size_t *out_len, lt_err *err) {
    assert(dir && out && out_len);
    *out = NULL;
    *out_len = 0;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return lt_err_set(err, 400, "%s is not a directory", dir);
    strbuf sb = STRBUF_INIT;
    struct archive *w = archive_write_new();
    if (!w) abort();
    archive_write_set_format_pax_restricted(w);
    if (gzip) {
        archive_write_add_filter_gzip(w);
        archive_write_set_filter_option(w, "gzip", "timestamp", NULL);
    }
    archive_write_set_bytes_in_last_block(w, 1);
    int rc = 0;
    if (archive_write_open2(w, &sb, NULL, pack_write, NULL, NULL) != ARCHIVE_OK) {
        rc = lt_err_set(err, 500, "cannot start the archive: %s",
                        archive_error_string(w) ? archive_error_string(w) : "error");
    } else {
        rc = pack_tree(w, dir, "", 0, err);
        if (archive_write_close(w) != ARCHIVE_OK && rc == 0)
            rc = lt_err_set(err, 500, "cannot finish the archive: %s",
                            archive_error_string(w) ? archive_error_string(w) : "error");
    }
    archive_write_free(w);
    if (rc != 0) {
        sb_free(&sb);
        return -1;
    }
    assert(sb.buf); /* a tar always holds at least its end-of-archive blocks */
    *out_len = sb.len;
    *out = (unsigned char *)sb_steal(&sb);
    return 0;
}
