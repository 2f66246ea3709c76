/* Unit tests for util/archive: every safety rule of archive_unpack_mem, manifest location, and packing.
 *
 * Test archives are built here with libarchive's writer, which happily writes the hostile entries (absolute
 * paths, "..", devices, links out of the root) that the reader must refuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/archive.h"
#include "util/strbuf.h"
#include "util/util.h"

/* ---- a tiny archive builder ---- */

typedef struct ent {
    const char *path;
    int type; /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFCHR, AE_IFIFO, or 1 for a hard link */
    const char *data_or_target;
} ent;

static la_ssize_t wcb(struct archive *a, void *ud, const void *buf, size_t n) {
    (void)a;
    sb_append((strbuf *)ud, buf, n);
    return (la_ssize_t)n;
}

/* Builds a tar (gzip != 0: tar.gz) of the entries; returns malloc'd bytes. */
static unsigned char *build(const ent *ents, size_t n, int gzip, size_t *len) {
    strbuf sb = STRBUF_INIT;
    struct archive *w = archive_write_new();
    archive_write_set_format_pax_restricted(w);
    if (gzip) archive_write_add_filter_gzip(w);
    archive_write_set_bytes_in_last_block(w, 1);
    assert_int_equal(archive_write_open2(w, &sb, NULL, wcb, NULL, NULL), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, ents[i].path);
        archive_entry_set_perm(e, 0644);
        if (ents[i].type == 1) {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, ents[i].data_or_target);
            archive_entry_set_size(e, 0);
        } else {
            archive_entry_set_filetype(e, (mode_t)ents[i].type);
            if (ents[i].type == AE_IFREG)
                archive_entry_set_size(e, (la_int64_t)strlen(ents[i].data_or_target));
            if (ents[i].type == AE_IFLNK) archive_entry_set_symlink(e, ents[i].data_or_target);
            if (ents[i].type == AE_IFCHR) archive_entry_set_rdev(e, 0x0101);
        }
        assert_int_equal(archive_write_header(w, e), ARCHIVE_OK);
        if (ents[i].type == AE_IFREG)
            archive_write_data(w, ents[i].data_or_target, strlen(ents[i].data_or_target));
        archive_entry_free(e);
    }
    archive_write_close(w);
    archive_write_free(w);
    *len = sb.len;
    return (unsigned char *)sb_steal(&sb);
}

/* Unpacks the entries; returns the rc and leaves the error in *err. */
static int try_unpack(const ent *ents, size_t n, int gzip, const archive_limits *lim, archive_items *out,
                      lt_err *err) {
    size_t len;
    unsigned char *buf = build(ents, n, gzip, &len);
    lt_err_clear(err);
    int rc = archive_unpack_mem(buf, len, lim, out, err);
    free(buf);
    return rc;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void expect_refused(const ent *ents, size_t n, int code, const char *needle) {
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(try_unpack(ents, n, 0, NULL, &it, &err), -1);
    assert_int_equal(err.code, code);
    if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
    assert_int_equal(it.n, 0);
    assert_null(it.v);
}

static void test_plain_and_gzip(void **state) {
    ent e[] = {{"./ds/", AE_IFDIR, NULL},
               {"./ds/dataset.yaml", AE_IFREG, "name: x\n"},
               {"./ds//data/train.jsonl", AE_IFREG, "{\"prompt\":\"a\"}\n"},
               {"ds/empty.txt", AE_IFREG, ""}};
    for (int gz = 0; gz < 2; gz++) {
        archive_items it = ARCHIVE_ITEMS_INIT;
        lt_err err;
        assert_int_equal(try_unpack(e, N(e), gz, NULL, &it, &err), 0);
        assert_int_equal(it.n, 3);
        assert_string_equal(it.v[0].path, "ds/data/train.jsonl"); /* sorted, normalized */
        assert_string_equal(it.v[1].path, "ds/dataset.yaml");
        assert_string_equal(it.v[2].path, "ds/empty.txt");
        assert_int_equal(it.v[2].size, 0);
        assert_int_equal(it.v[2].data[0], '\0');
        assert_int_equal(it.total, strlen("name: x\n") + strlen("{\"prompt\":\"a\"}\n"));
        assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), 0);
        assert_string_equal(it.v[1].path, "dataset.yaml");
        assert_non_null(archive_items_find(&it, "data/train.jsonl"));
        assert_memory_equal(archive_items_find(&it, "dataset.yaml")->data, "name: x\n", 8);
        archive_items_free(&it);
    }
}

static void test_junk_skipped(void **state) {
    ent e[] = {{"ds/", AE_IFDIR, NULL},
               {"ds/dataset.yaml", AE_IFREG, "x"},
               {"ds/.git/config", AE_IFREG, "secret"},
               {"ds/sub/__pycache__/m.pyc", AE_IFREG, "x"},
               {"ds/.DS_Store", AE_IFREG, "x"},
               {"._ds", AE_IFREG, "appledouble"},
               {"__MACOSX/ds/._dataset.yaml", AE_IFREG, "x"}};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(try_unpack(e, N(e), 1, NULL, &it, &err), 0);
    assert_int_equal(it.n, 1);
    assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), 0); /* still one top-level directory */
    assert_string_equal(it.v[0].path, "dataset.yaml");
    archive_items_free(&it);
    ent bad[] = {{".git/../../x", AE_IFREG, "x"}}; /* junk names are still checked first */
    expect_refused(bad, N(bad), 400, "'..' in path");
    /* skipped bytes are still decompressed: they count against the limits (a bomb under a junk name) */
    ent bomb[] = {{"dataset.yaml", AE_IFREG, "x"}, {".git/pack", AE_IFREG, "0123456789012345"}};
    archive_limits lim = {10, 100, 15, 0, 0};
    assert_int_equal(try_unpack(bomb, N(bomb), 1, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: unpacked contents are over the limit of 15 bytes");
    lim = (archive_limits){10, 10, 100, 0, 0};
    assert_int_equal(try_unpack(bomb, N(bomb), 1, &lim, &it, &err), -1);
    assert_string_equal(err.msg, "archive: .git/pack is 16 bytes, over the per-file limit of 10 bytes");
}

static void test_absolute_path(void **state) {
    ent e[] = {{"/etc/passwd", AE_IFREG, "x"}};
    expect_refused(e, N(e), 400, "unsafe entry '/etc/passwd': absolute path");
}

static void test_dotdot(void **state) {
    ent e[] = {{"ok.txt", AE_IFREG, "x"}, {"a/../../evil", AE_IFREG, "x"}};
    expect_refused(e, N(e), 400, "unsafe entry 'a/../../evil': '..' in path");
    ent e2[] = {{"a/..", AE_IFDIR, NULL}};
    expect_refused(e2, N(e2), 400, "'..' in path");
}

static void test_control_chars(void **state) {
    ent e[] = {{"a\nb", AE_IFREG, "x"}};
    expect_refused(e, N(e), 400, "control character in path");
}

static void test_device_fifo(void **state) {
    ent e[] = {{"dev", AE_IFCHR, NULL}};
    expect_refused(e, N(e), 400, "dev is a device file");
    ent f[] = {{"pipe", AE_IFIFO, NULL}};
    expect_refused(f, N(f), 400, "pipe is a fifo");
}

static void test_symlink_outside(void **state) {
    ent e[] = {{"a/link", AE_IFLNK, "../../etc/passwd"}};
    expect_refused(e, N(e), 400, "symbolic link a/link points outside the archive root");
    ent f[] = {{"link", AE_IFLNK, "/etc/passwd"}};
    expect_refused(f, N(f), 400, "symbolic link link points outside the archive root");
}

static void test_symlink_inside(void **state) {
    ent e[] = {{"data/real.jsonl", AE_IFREG, "{}\n"},
               {"data/alias.jsonl", AE_IFLNK, "real.jsonl"},
               {"top.jsonl", AE_IFLNK, "data/alias.jsonl"}, /* a chain */
               {"hard.jsonl", 1, "data/real.jsonl"}};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(try_unpack(e, N(e), 0, NULL, &it, &err), 0);
    assert_int_equal(it.n, 4);
    assert_memory_equal(archive_items_find(&it, "data/alias.jsonl")->data, "{}\n", 3);
    assert_memory_equal(archive_items_find(&it, "top.jsonl")->data, "{}\n", 3);
    assert_memory_equal(archive_items_find(&it, "hard.jsonl")->data, "{}\n", 3);
    archive_items_free(&it);
}

static void test_dangling_and_dir_links(void **state) {
    ent e[] = {{"link", AE_IFLNK, "missing.txt"}};
    expect_refused(e, N(e), 400, "link link points to missing.txt, which is not a file in the archive");
    ent f[] = {{"d/", AE_IFDIR, NULL}, {"d/x", AE_IFREG, "1"}, {"l", AE_IFLNK, "d"}};
    expect_refused(f, N(f), 400, "link l points to a directory");
    ent g[] = {{"h", 1, "../x"}};
    expect_refused(g, N(g), 400, "hard link h points outside the archive");
    ent loop[] = {{"a", AE_IFLNK, "b"}, {"b", AE_IFLNK, "a"}};
    expect_refused(loop, N(loop), 400, "link a points to b, which is not a file");
}

static void test_duplicates(void **state) {
    ent e[] = {{"a.txt", AE_IFREG, "1"}, {"./a.txt", AE_IFREG, "2"}};
    expect_refused(e, N(e), 400, "a.txt appears twice");
    ent f[] = {{"a.txt", AE_IFREG, "1"}, {"a.txt", AE_IFLNK, "b"}, {"b", AE_IFREG, "2"}};
    expect_refused(f, N(f), 400, "a.txt appears twice");
}

static void test_limits(void **state) {
    ent e[] = {{"a", AE_IFREG, "0123456789"}, {"b", AE_IFREG, "0123456789"}, {"c/", AE_IFDIR, NULL}};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    archive_limits lim = {2, 100, 100, 0, 0};
    assert_int_equal(try_unpack(e, N(e), 0, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: more than 2 entries");
    lim = (archive_limits){10, 5, 100, 0, 0};
    assert_int_equal(try_unpack(e, N(e), 0, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: a is 10 bytes, over the per-file limit of 5 bytes");
    lim = (archive_limits){10, 100, 15, 0, 0};
    assert_int_equal(try_unpack(e, N(e), 1, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: unpacked contents are over the limit of 15 bytes");
    /* links count against the total too */
    ent l[] = {{"a", AE_IFREG, "0123456789"}, {"b", AE_IFLNK, "a"}};
    assert_int_equal(try_unpack(l, N(l), 0, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_null(it.v);
}

/* A gzip bomb: 64 MiB of zeros in one file compresses to ~64 KiB; a 1 MiB limit stops it early. */
static void test_gzip_bomb(void **state) {
    size_t big = 64u << 20;
    char *zeros = calloc(1, big + 1);
    memset(zeros, 'a', big);
    ent e[] = {{"bomb.txt", AE_IFREG, zeros}};
    size_t len;
    unsigned char *buf = build(e, 1, 1, &len);
    free(zeros);
    assert_true(len < (1u << 20));
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    archive_limits lim = {100, (size_t)1 << 30, 1u << 20, 0, 0};
    assert_int_equal(archive_unpack_mem(buf, len, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    free(buf);
}

static void test_malformed(void **state) {
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(
        archive_unpack_mem("hello, not an archive at all, just some text........", 52, NULL, &it, &err), -1);
    assert_int_equal(err.code, 400);
    assert_string_equal(err.msg, "archive: not a tar or tar.gz archive (Unrecognized archive format)");
    assert_int_equal(archive_unpack_mem("", 0, NULL, &it, &err), -1);
    assert_string_equal(err.msg, "archive: the body is empty; send a tar or tar.gz file");
    /* a truncated archive: header promises more bytes than follow */
    ent e[] = {{"a.txt", AE_IFREG, "0123456789012345678901234567890123456789"}};
    size_t len;
    unsigned char *buf = build(e, 1, 0, &len);
    assert_int_equal(archive_unpack_mem(buf, 520, NULL, &it, &err), -1);
    assert_int_equal(err.code, 400);
    /* an archive of nothing but the end marker */
    memset(buf, 0, 1024);
    assert_int_equal(archive_unpack_mem(buf, 1024, NULL, &it, &err), -1);
    assert_string_equal(err.msg, "archive: the archive is empty");
    free(buf);
}

static void test_root_location(void **state) {
    lt_err err;
    archive_items it = ARCHIVE_ITEMS_INIT;
    ent two[] = {{"a/dataset.yaml", AE_IFREG, "x"}, {"b/x.jsonl", AE_IFREG, "x"}};
    assert_int_equal(try_unpack(two, N(two), 0, NULL, &it, &err), 0);
    assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), -1);
    assert_int_equal(err.code, 422);
    assert_string_equal(err.msg,
                        "dataset.yaml not found: put it at the archive root or inside a single top-level "
                        "directory that holds everything else");
    archive_items_free(&it);
    ent deep[] = {{"a/b/dataset.yaml", AE_IFREG, "x"}};
    assert_int_equal(try_unpack(deep, N(deep), 0, NULL, &it, &err), 0);
    assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), -1);
    archive_items_free(&it);
    ent root[] = {{"dataset.yaml", AE_IFREG, "x"}, {"b/x.jsonl", AE_IFREG, "x"}};
    assert_int_equal(try_unpack(root, N(root), 0, NULL, &it, &err), 0);
    assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), 0);
    assert_non_null(archive_items_find(&it, "b/x.jsonl"));
    archive_items_free(&it);
}

static void write_file(const char *dir, const char *rel, const char *text) {
    char *p = lt_path_join(dir, rel);
    lt_err err;
    assert_int_equal(lt_write_file_atomic(p, text, strlen(text), 0644, &err), 0);
    free(p);
}

static void test_pack_roundtrip(void **state) {
    char dir[] = "/tmp/lathe-test-archive-XXXXXX";
    assert_non_null(mkdtemp(dir));
    lt_err err;
    char *sub = lt_path_join(dir, "agents/.git");
    assert_int_equal(lt_mkdir_p(sub, 0755, &err), 0);
    free(sub);
    write_file(dir, "capability.yaml", "name: c\n");
    write_file(dir, "agents/assistant.md", "hello\n");
    write_file(dir, "agents/.git/config", "secret\n");
    write_file(dir, ".DS_Store", "junk");
    char *lnk = lt_path_join(dir, "alias.md");
    assert_int_equal(symlink("agents/assistant.md", lnk), 0);
    free(lnk);
    unsigned char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(archive_pack_dir(dir, 1, &a, &na, &err), 0);
    sleep(1); /* a timestamp anywhere in the output would now differ */
    assert_int_equal(archive_pack_dir(dir, 1, &b, &nb, &err), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    archive_items it = ARCHIVE_ITEMS_INIT;
    assert_int_equal(archive_unpack_mem(a, na, NULL, &it, &err), 0);
    assert_int_equal(it.n, 3);
    assert_string_equal(it.v[0].path, "agents/assistant.md");
    assert_string_equal(it.v[1].path, "alias.md");
    assert_string_equal(it.v[2].path, "capability.yaml");
    assert_memory_equal(it.v[1].data, "hello\n", 6);
    archive_items_free(&it);
    free(a);
    free(b);
    char empty[] = "/tmp/lathe-test-archive-empty-XXXXXX";
    assert_non_null(mkdtemp(empty));
    assert_int_equal(archive_pack_dir(empty, 0, &a, &na, &err), 0);   /* packs to an empty tar... */
    assert_int_equal(archive_unpack_mem(a, na, NULL, &it, &err), -1); /* ...which the reader refuses */
    assert_string_equal(err.msg, "archive: the archive is empty");
    free(a);
    rmdir(empty);
    assert_int_equal(archive_pack_dir("/nonexistent-lathe", 0, &a, &na, &err), -1);
    assert_string_equal(err.msg, "/nonexistent-lathe is not a directory");
    lt_rm_rf(dir);
}

/* Links, devices and fifos under tool-dropping names get the same checks as any other entry (the type check
 * comes before the junk rule); safe ones are still skipped. */
static void test_dangerous_junk(void **state) {
    ent a[] = {{"ds/dataset.yaml", AE_IFREG, "x"}, {"ds/.DS_Store", AE_IFLNK, "/etc/passwd"}};
    expect_refused(a, N(a), 400, "symbolic link ds/.DS_Store points outside the archive root");
    ent b[] = {{"__pycache__/x.pyc", AE_IFLNK, "../../etc/passwd"}};
    expect_refused(b, N(b), 400, "symbolic link __pycache__/x.pyc points outside");
    ent c[] = {{".git", AE_IFLNK, "/"}};
    expect_refused(c, N(c), 400, "symbolic link .git points outside");
    ent d[] = {{".git/hooks/x", 1, "/etc/shadow"}};
    expect_refused(d, N(d), 400, "hard link .git/hooks/x points outside the archive (absolute path)");
    ent e[] = {{".DS_Store", AE_IFCHR, NULL}};
    expect_refused(e, N(e), 400, ".DS_Store is a device file");
    ent f[] = {{"__MACOSX/p", AE_IFIFO, NULL}};
    expect_refused(f, N(f), 400, "__MACOSX/p is a fifo");
    /* a link under a junk name that stays inside is skipped like the junk it is */
    ent ok[] = {{"a.txt", AE_IFREG, "1"}, {".git/HEAD", AE_IFLNK, "../a.txt"}, {"._a", 1, "a.txt"}};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(try_unpack(ok, N(ok), 0, NULL, &it, &err), 0);
    assert_int_equal(it.n, 1);
    archive_items_free(&it);
}

static void test_file_and_dir(void **state) {
    ent a[] = {{"a", AE_IFREG, "x"}, {"a/b", AE_IFREG, "y"}};
    expect_refused(a, N(a), 400, "archive: a is both a file and a directory (a/b is inside it)");
    ent b[] = {{"d/a/b/c", AE_IFREG, "y"}, {"d/a", AE_IFLNK, "x"}, {"x", AE_IFREG, "1"}};
    expect_refused(b, N(b), 400, "archive: d/a is both a file and a directory (d/a/b/c is inside it)");
    ent c[] = {{"a/", AE_IFDIR, NULL}, {"a", AE_IFREG, "x"}};
    expect_refused(c, N(c), 400, "archive: a is both a file and a directory");
    ent d[] = {{"a", AE_IFREG, "x"}, {"a/sub/", AE_IFDIR, NULL}};
    expect_refused(d, N(d), 400, "archive: a is both a file and a directory (a/sub is inside it)");
    /* siblings whose names share a prefix are fine */
    ent ok[] = {{"a", AE_IFREG, "x"}, {"a-b/c", AE_IFREG, "y"}, {"a.d/e", AE_IFREG, "z"}};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    assert_int_equal(try_unpack(ok, N(ok), 0, NULL, &it, &err), 0);
    assert_int_equal(it.n, 3);
    archive_items_free(&it);
}

/* The expansion ratio: past the floor, unpacked bytes may be at most max_ratio times the archive's size; the
 * declared sizes are checked at the header, so nothing is read. */
static void test_ratio(void **state) {
    size_t big = 4u << 20;
    char *zeros = calloc(1, big + 1);
    memset(zeros, 'a', big);
    ent e[] = {{"z.txt", AE_IFREG, zeros}};
    size_t len;
    unsigned char *buf = build(e, 1, 1, &len);
    free(zeros);
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err;
    archive_limits lim = {100, (size_t)1 << 30, (size_t)1 << 30, 100, 1u << 20};
    assert_int_equal(archive_unpack_mem(buf, len, &lim, &it, &err), -1);
    assert_int_equal(err.code, 413);
    if (!strstr(err.msg, "the expansion ratio limit is 100")) fail_msg("%s", err.msg);
    lim.ratio_floor = big; /* under the floor: no ratio check */
    assert_int_equal(archive_unpack_mem(buf, len, &lim, &it, &err), 0);
    archive_items_free(&it);
    lim.ratio_floor = 1u << 20;
    lim.max_ratio = 0; /* off */
    assert_int_equal(archive_unpack_mem(buf, len, &lim, &it, &err), 0);
    archive_items_free(&it);
    free(buf);
}

static char *write_tmp(const unsigned char *buf, size_t len) {
    char *path = lt_strdup("/tmp/lathe-test-archive-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
    return path;
}

static int want_yaml(const char *path, void *ud) {
    (void)ud;
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".yaml");
}

typedef struct streamed {
    strbuf seen; /* "path=bytes;" for every streamed file */
    const char *stop_at;
} streamed;

static int on_file(const char *src, archive_stream *s, void *ud, lt_err *err) {
    streamed *st = ud;
    sb_printf(&st->seen, "%s=", src);
    char buf[3];
    long r;
    while ((r = archive_stream_read(s, buf, sizeof buf, err)) > 0)
        sb_append(&st->seen, buf, (size_t)r);
    sb_puts(&st->seen, ";");
    if (r < 0) return -1;
    if (st->stop_at && !strcmp(src, st->stop_at)) return lt_err_set(err, 422, "stop");
    return 0;
}

static int stop_at_manifest(const char *path, const unsigned char *data, size_t size, void *ud, lt_err *err) {
    (void)ud;
    assert_non_null(data);
    return lt_err_set(err, 409, "%s seen (%zu bytes)", path, size);
}

/* archive_scan_file keeps only the wanted bytes (and their links' copies); archive_stream_files then hands
 * out every regular file's bytes in archive order, junk left out, and its limits apply to the bytes read. */
static void test_scan_and_stream(void **state) {
    ent e[] = {{"ds/", AE_IFDIR, NULL},
               {"ds/dataset.yaml", AE_IFREG, "name: x\n"},
               {"ds/train.jsonl", AE_IFREG, "0123456789"},
               {"ds/.git/x", AE_IFREG, "junk"},
               {"ds/link.jsonl", AE_IFLNK, "train.jsonl"},
               {"ds/copy.yaml", 1, "ds/dataset.yaml"}};
    size_t len;
    unsigned char *buf = build(e, N(e), 1, &len);
    char *path = write_tmp(buf, len);
    free(buf);
    archive_want want = {want_yaml, NULL, 1024, 4096, NULL};
    archive_items it = ARCHIVE_ITEMS_INIT;
    lt_err err = {0};
    assert_int_equal(archive_scan_file(path, NULL, &want, &it, &err), 0);
    assert_int_equal(archive_items_root(&it, "dataset.yaml", &err), 0);
    assert_int_equal(it.n, 4);
    const archive_item *m = archive_items_find(&it, "dataset.yaml");
    assert_non_null(m->data);
    assert_string_equal((const char *)m->data, "name: x\n");
    assert_string_equal(m->src, "ds/dataset.yaml");
    assert_string_equal((const char *)archive_items_find(&it, "copy.yaml")->data, "name: x\n");
    const archive_item *t = archive_items_find(&it, "train.jsonl");
    assert_null(t->data);
    assert_int_equal(t->size, 10);
    const archive_item *l = archive_items_find(&it, "link.jsonl");
    assert_null(l->data);
    assert_int_equal(l->size, 10);
    assert_string_equal(l->src, "ds/train.jsonl");
    assert_int_equal(it.total, 8 + 10 + 10 + 8);
    archive_items_free(&it);

    streamed st = {STRBUF_INIT, NULL};
    assert_int_equal(archive_stream_files(path, NULL, on_file, &st, &err), 0);
    assert_string_equal(st.seen.buf, "ds/dataset.yaml=name: x\n;ds/train.jsonl=0123456789;");
    sb_reset(&st.seen);
    st.stop_at = "ds/dataset.yaml"; /* a callback's error stops the walk */
    assert_int_equal(archive_stream_files(path, NULL, on_file, &st, &err), -1);
    assert_string_equal(err.msg, "stop");
    assert_string_equal(st.seen.buf, "ds/dataset.yaml=name: x\n;");
    sb_reset(&st.seen);
    st.stop_at = NULL;
    archive_limits lim = {100, 9, 100, 0, 0};
    assert_int_equal(archive_stream_files(path, &lim, on_file, &st, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg, "archive: ds/train.jsonl is over the per-file limit of 9 bytes");
    sb_free(&st.seen);

    /* wanted files have their own limits */
    want.max_file = 4;
    assert_int_equal(archive_scan_file(path, NULL, &want, &it, &err), -1);
    assert_int_equal(err.code, 413);
    assert_string_equal(err.msg,
                        "archive: ds/dataset.yaml is 8 bytes, over the limit of 4 bytes for this file");
    want.max_file = 1024;
    want.max_total = 12; /* the hard link's copy counts too */
    assert_int_equal(archive_scan_file(path, NULL, &want, &it, &err), -1);
    assert_int_equal(err.code, 413);
    if (!strstr(err.msg, "manifests and prompts together are over the limit of 12 bytes"))
        fail_msg("%s", err.msg);
    assert_null(it.v);

    /* a wanted path that links to a file the scan did not read is refused with a clear message */
    ent lk[] = {{"README", AE_IFREG, "name: x\n"}, {"dataset.yaml", AE_IFLNK, "README"}};
    buf = build(lk, N(lk), 0, &len);
    char *path2 = write_tmp(buf, len);
    free(buf);
    assert_int_equal(archive_scan_file(path2, NULL, &want, &it, &err), -1);
    assert_int_equal(err.code, 400);
    if (!strstr(err.msg, "dataset.yaml is a link to README; put the file itself there"))
        fail_msg("%s", err.msg);
    unlink(path2);
    free(path2);

    /* the seen callback gets each wanted file as soon as it is read, and can stop the scan */
    want.max_total = 4096;
    want.seen = stop_at_manifest;
    assert_int_equal(archive_scan_file(path, NULL, &want, &it, &err), -1);
    assert_int_equal(err.code, 409);
    assert_string_equal(err.msg, "ds/dataset.yaml seen (8 bytes)");
    assert_null(it.v);
    unlink(path);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_and_gzip),
        cmocka_unit_test(test_junk_skipped),
        cmocka_unit_test(test_absolute_path),
        cmocka_unit_test(test_dotdot),
        cmocka_unit_test(test_control_chars),
        cmocka_unit_test(test_device_fifo),
        cmocka_unit_test(test_symlink_outside),
        cmocka_unit_test(test_symlink_inside),
        cmocka_unit_test(test_dangling_and_dir_links),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_gzip_bomb),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_root_location),
        cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_dangerous_junk),
        cmocka_unit_test(test_file_and_dir),
        cmocka_unit_test(test_ratio),
        cmocka_unit_test(test_scan_and_stream),
    };
    return cmocka_run_group_tests_name("archive", tests, NULL, NULL);
}
