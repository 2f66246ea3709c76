/* test_blob.c: the content-addressed blob store (blob.h): layout on disk, digests against known SHA-256
 * values, idempotent puts, streaming writers, file puts, reads, deletes and the error codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "blob/blob.h"
#include "util/util.h"

/* sha256("abc") */
#define ABC_HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/* sha256("") */
#define EMPTY_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct fx {
    char dir[128];
    blob_store *bs;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/lathe-test-blob-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    lt_err err = {0};
    f->bs = blob_open(f->dir, &err);
    if (!f->bs) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    blob_close(f->bs);
    lt_rm_rf(f->dir);
    free(f);
    return 0;
}

static void test_put_layout_and_read(void **state) {
    fx *f = *state;
    lt_err err = {0};
    char d[BLOB_DIGEST_LEN];
    assert_int_equal(blob_put(f->bs, "abc", 3, d, &err), 0);
    assert_string_equal(d, "sha256:" ABC_HEX);
    char expect[512];
    snprintf(expect, sizeof expect, "%s/blobs/sha256/ba/%s", f->dir, ABC_HEX + 2);
    char *p = blob_path(f->bs, d, &err);
    assert_non_null(p);
    assert_string_equal(p, expect);
    free(p);
    assert_true(blob_exists(f->bs, d));
    assert_int_equal(blob_size(f->bs, d, &err), 3);
    size_t n = 0;
    char *data = blob_read(f->bs, d, &n, &err);
    assert_non_null(data);
    assert_int_equal(n, 3);
    assert_string_equal(data, "abc");
    free(data);
    /* Same bytes again: same digest, no error, still one file. */
    char d2[BLOB_DIGEST_LEN];
    assert_int_equal(blob_put(f->bs, "abc", 3, d2, &err), 0);
    assert_string_equal(d, d2);
    /* Empty blob. */
    assert_int_equal(blob_put(f->bs, "", 0, d2, &err), 0);
    assert_string_equal(d2, "sha256:" EMPTY_HEX);
    assert_int_equal(blob_size(f->bs, d2, &err), 0);
    /* No temp files left behind. */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/blobs/tmp", f->dir);
    assert_int_equal(rmdir(tmp), 0); /* empty */
}

static void test_writer_streams(void **state) {
    fx *f = *state;
    lt_err err = {0};
    blob_writer *w = blob_writer_open(f->bs, &err);
    assert_non_null(w);
    assert_int_equal(blob_writer_write(w, "a", 1, &err), 0);
    assert_int_equal(blob_writer_write(w, "bc", 2, &err), 0);
    char d[BLOB_DIGEST_LEN];
    int64_t size = -1;
    assert_int_equal(blob_writer_finish(w, d, &size, &err), 0);
    assert_string_equal(d, "sha256:" ABC_HEX);
    assert_int_equal(size, 3);
    /* An aborted writer leaves nothing. */
    w = blob_writer_open(f->bs, &err);
    assert_int_equal(blob_writer_write(w, "zzz", 3, &err), 0);
    blob_writer_abort(w);
    char sha[LT_SHA256_HEX], digest[BLOB_DIGEST_LEN];
    lt_sha256_hex("zzz", 3, sha);
    snprintf(digest, sizeof digest, "sha256:%s", sha);
    assert_false(blob_exists(f->bs, digest));
}

static void test_put_file(void **state) {
    fx *f = *state;
    lt_err err = {0};
    /* A file larger than one read buffer. */
    size_t n = 200000;
    char *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(i * 31 + 7);
    char path[256];
    snprintf(path, sizeof path, "%s/input.bin", f->dir);
    assert_int_equal(lt_write_file_atomic(path, buf, n, 0644, &err), 0);
    char d[BLOB_DIGEST_LEN], want[LT_SHA256_HEX];
    int64_t size = 0;
    assert_int_equal(blob_put_file(f->bs, path, d, &size, &err), 0);
    lt_sha256_hex(buf, n, want);
    assert_string_equal(d + 7, want);
    assert_int_equal(size, (int64_t)n);
    assert_int_equal(access(path, F_OK), 0); /* source untouched */
    size_t got = 0;
    char *back = blob_read(f->bs, d, &got, &err);
    assert_int_equal(got, n);
    assert_memory_equal(back, buf, n);
    free(back);
    free(buf);
    assert_int_equal(blob_put_file(f->bs, "/nonexistent/file", d, NULL, &err), -1);
    assert_int_equal(err.code, 404);
    assert_non_null(strstr(err.msg, "/nonexistent/file"));
}

static void test_delete_and_errors(void **state) {
    fx *f = *state;
    lt_err err = {0};
    char d[BLOB_DIGEST_LEN];
    assert_int_equal(blob_put(f->bs, "abc", 3, d, &err), 0);
    assert_int_equal(blob_delete(f->bs, d, &err), 0);
    assert_false(blob_exists(f->bs, d));
    assert_int_equal(blob_delete(f->bs, d, &err), 0); /* absent: fine */
    assert_null(blob_path(f->bs, d, &err));
    assert_int_equal(err.code, 404);
    assert_int_equal(blob_size(f->bs, d, &err), -1);
    assert_null(blob_read(f->bs, d, NULL, &err));
    /* Malformed digests. */
    const char *bad[] = {"",
                         "sha256:",
                         "sha256:ABC",
                         "md5:" ABC_HEX,
                         "sha256:" ABC_HEX "00",
                         "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                         "sha256:../../../../../../etc/passwd/../../../../../../../../../../../../x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(blob_digest_valid(bad[i]));
        lt_err_clear(&err);
        assert_null(blob_path(f->bs, bad[i], &err));
        assert_int_equal(err.code, 400);
        assert_int_equal(blob_delete(f->bs, bad[i], &err), -1);
    }
    assert_true(blob_digest_valid("sha256:" ABC_HEX));
    assert_null(blob_open("", &err));
}

/* The sweep removes what killed writers left (no flock held), keeps a live writer's temp file and other
 * names, and a missing directory is nothing to sweep. */
static void test_sweep(void **state) {
    fx *f = *state;
    lt_err err = {0};
    char *tmp = lt_path_join(f->dir, "blobs/tmp");
    char *dead = lt_path_join(tmp, "dead.part"), *other = lt_path_join(tmp, "keep.txt");
    assert_int_equal(lt_write_file_atomic(dead, "x", 1, 0600, &err), 0);
    assert_int_equal(lt_write_file_atomic(other, "x", 1, 0600, &err), 0);
    blob_writer *w = blob_writer_open(f->bs, &err); /* alive: holds its lock */
    assert_non_null(w);
    assert_int_equal(blob_writer_write(w, "abc", 3, &err), 0);
    assert_int_equal(blob_sweep(f->bs, &err), 1);
    struct stat st;
    assert_int_equal(stat(dead, &st), -1);
    assert_int_equal(stat(other, &st), 0);
    char digest[BLOB_DIGEST_LEN];
    assert_int_equal(blob_writer_finish(w, digest, NULL, &err), 0); /* its temp file survived the sweep */
    assert_string_equal(digest, "sha256:" ABC_HEX);
    assert_int_equal(blob_sweep_dir(tmp, "keep", ".txt", &err), 1);
    assert_int_equal(stat(other, &st), -1);
    char *missing = lt_path_join(f->dir, "no-such-dir");
    assert_int_equal(blob_sweep_dir(missing, "", "", &err), 0);
    free(missing);
    free(dead);
    free(other);
    free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_layout_and_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_and_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
    };
    return cmocka_run_group_tests_name("blob", tests, NULL, NULL);
}
